"""The run directory: resolved config, per-round metrics, and the checks that protect it.

A workdir holds config.json, metrics.jsonl, checkpoints/, ledger.jsonl, keys/, adapter/,
report.md and plots. Starting a run never overwrites another run's files: a workdir whose
config.json differs in anything but the fields a resume may change is refused, naming the fields.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

# Fields a resumed run may change (more rounds, other bookkeeping); everything else must match.
RESUMABLE_FIELDS = ("workdir", "resume", "fed.rounds", "eval.every", "eval.batch_size",
                    "eval.group_size", "eval.round_max_test_per_client", "eval.mode",
                    "fed.client_group_size",
                    "checkpoint.every",
                    "checkpoint.keep", "cache_dir", "mesh.clients", "mesh.model")


# Fields added since runs were first recorded, with the value a run recorded before them had:
# an older config.json without the field is the same run as one with this value.
ADDED_FIELDS: dict[str, Any] = {"data.scale": 1, "data.clinics": 0, "privacy.calibration": "shared",
                                "privacy.client_sampling_rate": 0.0}


class WorkdirError(ValueError):
  """A workdir that cannot be used for this run (another run's files, incompatible config)."""


def flat_config(cfg: ml_collections.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
  d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flat_config(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """The fields whose values differ, apart from those a resume may change."""
  saved = {**{k: v for k, v in ADDED_FIELDS.items() if k in current}, **saved}
  keys = sorted(set(saved) | set(current))
  return [k for k in keys if k not in RESUMABLE_FIELDS and saved.get(k) != current.get(k)]


def check_workdir(workdir: str, cfg: ml_collections.ConfigDict, *, has_checkpoint: bool,
                  resume: bool) -> None:
  """Refuses a workdir that holds another run, or checkpoints that would be overwritten."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    diff = config_differences(saved, flat_config(cfg))
    if diff:
      raise WorkdirError(
          f"{workdir} holds a run with a different config ({', '.join(diff[:10])}); "
          "use a new --config.workdir or the same config")
    if has_checkpoint and not resume:
      raise WorkdirError(f"{workdir} has checkpoints and config.resume=False: refusing to "
                         "overwrite them; use a new --config.workdir")
  else:
    leftovers = [n for n in ("metrics.jsonl", "ledger.jsonl", "checkpoints")
                 if os.path.exists(os.path.join(workdir, n))]
    if leftovers:
      raise WorkdirError(f"{workdir} has {leftovers} but no config.json; not overwriting them")


def write_json(path: str, value: Any, **kw) -> None:
  """Writes `value` as JSON atomically: a crash leaves the old file or the new one, never half."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=1, **kw)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + ".tmp", path)


def write_config(workdir: str, cfg: ml_collections.ConfigDict) -> None:
  """config.json (the resolved config), written atomically once setup has succeeded."""
  write_json(os.path.join(workdir, "config.json"), flat_config(cfg), sort_keys=True)


class MetricsLog:
  """metrics.jsonl: one JSON record per round; on resume, records past the checkpoint go."""

  def __init__(self, path: str, keep_until_round: int):
    self.path = path
    records = self.read(path) if os.path.exists(path) else []
    kept = [r for r in records if r["round"] <= keep_until_round]
    if len(kept) != len(records) or not os.path.exists(path):
      tmp = path + ".tmp"
      with open(tmp, "w") as f:
        for r in kept:
          f.write(json.dumps(r) + "\n")
      os.replace(tmp, path)

  @staticmethod
  def read(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def append(self, record: dict[str, Any]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
