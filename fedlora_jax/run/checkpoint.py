"""orbax checkpoints of the federated state (and the base, when an algorithm changes it)."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """A checkpoint whose trees do not fit this run's state (another model, LoRA or layout)."""


class Checkpointer:
  """Saves {"state", "base"?} plus JSON metadata every `every` rounds, keeping the last `keep`."""

  def __init__(self, directory: str, *, every: int, keep: int):
    self.directory = os.path.abspath(directory)
    self.every = every
    self._mgr = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_round(self) -> int | None:
    return self._mgr.latest_step()

  def save(self, round_done: int, trees: dict[str, Any], meta: dict[str, Any], *,
           force: bool = False) -> bool:
    if not force and round_done % self.every:
      return False
    args = {k: ocp.args.StandardSave(v) for k, v in trees.items()}
    self._mgr.save(round_done, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **args),
                   force=True)
    self._mgr.wait_until_finished()
    return True

  def restore(self, round_done: int, like: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """Restores trees shaped like `like` (arrays or ShapeDtypeStructs) and the metadata."""
    abstract = {k: jax.tree.map(ocp.utils.to_shape_dtype_struct, v) for k, v in like.items()}
    args = {k: ocp.args.StandardRestore(v) for k, v in abstract.items()}
    try:
      out = self._mgr.restore(round_done,
                              args=ocp.args.Composite(meta=ocp.args.JsonRestore(), **args))
    except (ValueError, KeyError, TypeError) as e:
      first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
      raise CheckpointMismatchError(
          f"{self.directory}/{round_done} does not match this run's state ({type(e).__name__}: "
          f"{first}); resume with the model, LoRA and layer layout (model.scan_layers, whose "
          f"auto differs between CPU and accelerators) the run was started with") from e
    return {k: out[k] for k in like}, dict(out["meta"])

  def close(self) -> None:
    self._mgr.close()
