"""A finished run's base model, tokenizer and adapters, ready to decode with.

A run directory (scripts/train.py) holds config.json, summary.json (the run's hospitals), the
global adapter in `adapter/`, each hospital's personal adapter in `adapters/<name>/` for the
personalised algorithms (FedSA-LoRA, `local`), and FedEx-LoRA's base with the folded residuals in
`base_with_residuals/`. The base model directory is the one the adapter names
(`base_model_name_or_path`); the tokenizer is the base directory's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from tokenizers import Tokenizer

from fedlora_jax import models
from fedlora_jax.data.tokenization import load_hf_tokenizer


class GenerationError(ValueError):
  """A run, adapter, hospital or tokenizer that cannot be used to generate."""


def _read_json(path: str, what: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    raise GenerationError(f"{path}: no such file ({what})")
  with open(path) as f:
    return json.load(f)


@dataclasses.dataclass
class RunModel:
  """The base of a run, its tokenizer, and the adapters loaded so far (by directory)."""
  run_dir: str
  config: dict[str, Any]  # the run's flat config.json
  hospitals: list[str]
  base_dir: str
  tokenizer: Tokenizer
  graphdef: nnx.GraphDef
  base: dict
  lora_like: dict
  adapters: dict[str, dict] = dataclasses.field(default_factory=dict)

  def adapter_dir(self, hospital: str | None) -> str:
    """`adapters/<hospital>` when the run has personal adapters, else the global `adapter/`
    (FedAvg and the other global algorithms serve every hospital the same adapter)."""
    if hospital is not None and hospital not in self.hospitals:
      raise GenerationError(f"unknown hospital {hospital!r}; the run's hospitals: "
                            f"{', '.join(self.hospitals)}")
    personal = os.path.join(self.run_dir, "adapters", hospital or "")
    if hospital is not None and os.path.isdir(personal):
      return personal
    return os.path.join(self.run_dir, "adapter")

  def lora(self, adapter_dir: str) -> dict:
    """The PEFT adapter in `adapter_dir` as a LoRA tree like the run's (loaded once)."""
    if adapter_dir not in self.adapters:
      if not os.path.isdir(adapter_dir):
        raise GenerationError(f"{adapter_dir}: no such adapter directory")
      _check_adapter_config(adapter_dir, self.lora_like)
      try:
        self.adapters[adapter_dir] = models.load_peft_adapter(adapter_dir, self.lora_like)
      except models.CheckpointError as e:
        raise GenerationError(str(e)) from e
    return self.adapters[adapter_dir]

  def stacked_loras(self, adapter_dirs: list[str]) -> dict:
    """The adapters [A, ...] in the order given (for `generate(..., adapter_ids=...)`)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *(self.lora(d) for d in adapter_dirs))


def _lora_config(adapter_config: dict[str, Any], path: str) -> models.LoRAConfig:
  targets = adapter_config.get("target_modules")
  if not isinstance(targets, list):
    raise GenerationError(f"{path}: target_modules must be a list of module names, got "
                          f"{targets!r}")
  return models.LoRAConfig(rank=int(adapter_config["r"]), alpha=float(adapter_config["lora_alpha"]),
                           target_modules=tuple(targets),
                           use_rslora=bool(adapter_config.get("use_rslora", False)))


def _check_adapter_config(adapter_dir: str, lora_like: dict) -> None:
  """Refuses an adapter whose rank differs from the run's (shapes are checked on load)."""
  path = os.path.join(adapter_dir, "adapter_config.json")
  rank = int(_read_json(path, "PEFT adapter config")["r"])
  expected = int(jax.tree.leaves(lora_like)[0].shape[-2])  # lora_A [..., r, in]
  if rank != expected:
    raise GenerationError(f"{path}: rank {rank}, but the run's adapters have rank {expected}")


def load_run(run_dir: str, adapter_dir: str | None = None) -> RunModel:
  """Loads the base of the run in `run_dir` with LoRA shaped like `adapter_dir`'s (default: the
  run's global adapter)."""
  if not os.path.isdir(run_dir):
    raise GenerationError(f"{run_dir}: no such run directory")
  config = _read_json(os.path.join(run_dir, "config.json"), "not a run directory")
  summary = _read_json(os.path.join(run_dir, "summary.json"), "the run has not finished")
  hospitals = [c["client"] for c in summary["clients"]]
  adapter_dir = adapter_dir or os.path.join(run_dir, "adapter")
  adapter_config_path = os.path.join(adapter_dir, "adapter_config.json")
  adapter_config = _read_json(adapter_config_path, "PEFT adapter config")
  residuals = os.path.join(run_dir, "base_with_residuals")  # FedEx-LoRA's changed base
  base_dir = (residuals if os.path.isdir(residuals)
              else adapter_config.get("base_model_name_or_path") or config.get("model.hf_path"))
  if not base_dir or not os.path.isdir(base_dir):
    raise GenerationError(f"{adapter_config_path}: base model directory {base_dir!r} not found")
  try:
    tokenizer = load_hf_tokenizer(base_dir)
  except (OSError, ValueError) as e:
    raise GenerationError(f"{base_dir}: no usable tokenizer ({e})") from e
  model = models.load_hf_checkpoint(
      base_dir, param_dtype=config["model.param_dtype"], dtype=config["model.dtype"],
      scan_layers=config["model.scan_layers"], fuse_lora=config["model.fuse_lora"])
  # transformers builds an empty tokenizer for a directory without tokenizer files.
  if not 1 < tokenizer.get_vocab_size() <= model.cfg.vocab_size:
    raise GenerationError(f"{base_dir}: no usable tokenizer ({tokenizer.get_vocab_size()} tokens "
                          f"for a model of {model.cfg.vocab_size})")
  models.add_lora(model, _lora_config(adapter_config, adapter_config_path), rngs=nnx.Rngs(lora=0))
  graphdef, base, lora_like = models.split_lora(model)
  return RunModel(run_dir, config, hospitals, base_dir, tokenizer, graphdef, base, lora_like)
