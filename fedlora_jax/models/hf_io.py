"""Hugging Face checkpoints in (safetensors, no torch) and PEFT adapters out (and back in).

Module paths equal HF names, so a tensor `model.layers.3.mlp.up_proj.weight` lands in
`model/layers/3/mlp/up_proj/weight` unchanged (no transposes or permutations). Tensors are read
one at a time from the (possibly sharded) safetensors files, converted to the configured dtype and
placed on the device, so loading needs about one extra copy of the largest tensor in host memory.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from fedlora_jax.models.config import ModelConfig
from fedlora_jax.models.layer_stack import LAYERS, is_stacked, stack_layers, unstack_layers
from fedlora_jax.models.quant import QuantizedWeight, is_quantized
from fedlora_jax.models.lora import LoRAConfig, LoRAParam, iter_linears, layer_paths, lora_pairs
from fedlora_jax.models.transformer import CausalLM

PEFT_PREFIX = "base_model.model."
# Tensors that some checkpoints carry but that the computation derives or ignores.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


class CheckpointError(ValueError):
  """A checkpoint that does not match the model: missing, unexpected or mis-shaped tensors."""


def hf_name(path: tuple) -> str:
  return ".".join(str(p) for p in path)


def _tensor_files(model_dir: str) -> dict[str, str]:
  """Maps every tensor name to the safetensors file holding it."""
  index = os.path.join(model_dir, "model.safetensors.index.json")
  single = os.path.join(model_dir, "model.safetensors")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return {name: os.path.join(model_dir, fname) for name, fname in weight_map.items()}
  if os.path.exists(single):
    with safe_open(single, framework="numpy") as f:
      return {name: single for name in f.keys()}
  raise CheckpointError(
      f"{model_dir}: neither model.safetensors nor model.safetensors.index.json found")


def load_hf_checkpoint(model_dir: str | os.PathLike, **config_overrides: Any) -> CausalLM:
  """Builds a `CausalLM` from a local HF directory (config.json + safetensors).

  `config_overrides` replace `ModelConfig` fields (e.g. param_dtype="float32",
  remat_policy="full", quantize="nf4": each projection is quantized as it is read, so host memory
  holds the quantized base plus one float tensor).
  Raises `CheckpointError` naming any missing, unexpected or mis-shaped tensor.
  """
  model_dir = os.fspath(model_dir)
  cfg = ModelConfig.from_hf_config(model_dir, **config_overrides)
  abstract = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  flat = traverse_util.flatten_dict(abstract_state.to_pure_dict())
  stacked = abstract.cfg.scan_layers == "on"
  expected: dict[str, tuple[tuple, int | None]] = {}  # HF name -> (tree path, layer if stacked)
  for path in flat:
    if stacked and path[:2] == ("model", LAYERS):
      for i in range(flat[path].shape[0]):
        expected[hf_name(path[:2] + (i,) + path[2:])] = (path, i)
    else:
      expected[hf_name(path)] = (path, None)
  files = _tensor_files(model_dir)
  present = set(files)
  if cfg.tie_word_embeddings:
    present.discard("lm_head.weight")
  unexpected = sorted(n for n in present - set(expected) if not _IGNORED.match(n))
  missing = sorted(set(expected) - present)
  if missing:
    raise CheckpointError(f"{model_dir}: missing tensor(s) {missing[:8]}"
                          + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
  if unexpected:
    raise CheckpointError(f"{model_dir}: unexpected tensor(s) {unexpected[:8]}")
  values: dict[tuple, jax.Array] = {}
  layers: dict[tuple, dict[int, jax.Array]] = {}  # stacked leaves, one array per layer
  by_file: dict[str, list[str]] = {}
  for name in expected:
    by_file.setdefault(files[name], []).append(name)
  for fname, names in by_file.items():
    with safe_open(fname, framework="numpy") as f:
      for name in names:
        path, layer = expected[name]
        spec = flat[path]
        want = tuple(spec.shape[1:] if layer is not None else spec.shape)
        shape = tuple(f.get_slice(name).get_shape())
        if shape != want:
          raise CheckpointError(f"{model_dir}: tensor {name} has shape {shape}, "
                                f"the config expects {want}")
        value = jnp.asarray(f.get_tensor(name), dtype=spec.dtype)
        if isinstance(spec, QuantizedWeight):  # quantized as read: one float tensor at a time
          value = jax.block_until_ready(cfg.quant_format.quantize(value))
        if layer is None:
          values[path] = value
        else:
          layers.setdefault(path, {})[layer] = value
  for path in list(layers):  # one leaf at a time: the extra memory is one stacked leaf
    per_layer = layers.pop(path)
    values[path] = jax.tree.map(lambda *xs: jnp.stack(xs),
                                *[per_layer[i] for i in range(len(per_layer))])
  return nnx.merge(graphdef, traverse_util.unflatten_dict(values))


def save_hf_checkpoint(model: CausalLM, model_dir: str | os.PathLike) -> None:
  """Writes config.json + model.safetensors for the base weights (LoRA merged first if wanted)."""
  model_dir = os.fspath(model_dir)
  _, _, base = nnx.split(model, LoRAParam, ...)
  if is_quantized(base.to_pure_dict()):
    raise ValueError(f"{model_dir}: a quantized base (model.quantize={model.cfg.quantize!r}) is "
                     "not written as an HF checkpoint; save the float base it was loaded from")
  os.makedirs(model_dir, exist_ok=True)
  tensors = {hf_name(p): np.asarray(v)
             for p, v in traverse_util.flatten_dict(unstack_layers(base.to_pure_dict())).items()}
  save_file(tensors, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(model_dir, "config.json"), "w") as f:
    json.dump(model.cfg.to_hf_config(), f, indent=2)


# --- PEFT adapters -------------------------------------------------------------------------------


def peft_target_modules(model: CausalLM) -> list[str] | str:
  """PEFT `target_modules`: projection names when every such projection is adapted, else a
  regex that full-matches exactly the adapted module names."""
  adapted = [(p, lin.lora_A is not None) for path, lin in iter_linears(model)
             for p in layer_paths(path, lin)]
  names = sorted({p.rsplit("/", 1)[-1] for p, on in adapted if on})
  if all(on for p, on in adapted if p.rsplit("/", 1)[-1] in names):
    return names
  return "^(" + "|".join(re.escape(p.replace("/", ".")) for p, on in adapted if on) + ")$"


def peft_tensors(lora: dict) -> dict[str, np.ndarray]:
  """The {PEFT tensor name: float32 array} dict of an adapter (what `export_peft_adapter` writes;
  its ledger digest equals the digest of the exported file)."""
  tensors: dict[str, np.ndarray] = {}
  for path, pair in lora_pairs(unstack_layers(lora)):
    if pair["lora_A"].ndim != 2:
      raise ValueError(f"adapter {hf_name(path)} has a client axis; export one client's LoRA")
    for part in ("lora_A", "lora_B"):
      tensors[f"{PEFT_PREFIX}{hf_name(path)}.{part}.weight"] = np.asarray(pair[part], np.float32)
  return tensors


def export_peft_adapter(lora: dict, model: CausalLM, lora_config: LoRAConfig,
                        out_dir: str | os.PathLike, *, base_model_name_or_path: str = "") -> str:
  """Writes `adapter_model.safetensors` + `adapter_config.json` that HF PEFT loads unchanged.

  Args:
    lora: pure LoRA dict (no client axis) as returned by `functional.split_lora`.
    model: the adapted model (for target names).
  Returns the path of the safetensors file.
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  adapter_path = os.path.join(out_dir, "adapter_model.safetensors")
  save_file(peft_tensors(lora), adapter_path, metadata={"format": "pt"})
  peft_config = {
      "peft_type": "LORA",
      "task_type": "CAUSAL_LM",
      "base_model_name_or_path": base_model_name_or_path,
      "r": lora_config.rank,
      "lora_alpha": lora_config.alpha,
      "use_rslora": lora_config.use_rslora,
      "lora_dropout": lora_config.dropout,
      "target_modules": peft_target_modules(model),
      "bias": "none",
      "fan_in_fan_out": False,
      "inference_mode": True,
      "init_lora_weights": True,
      "modules_to_save": None,
  }
  with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
    json.dump(peft_config, f, indent=2)
  return adapter_path


def load_peft_adapter(adapter_dir: str | os.PathLike, like: dict) -> dict:
  """Reads a PEFT adapter into a pure LoRA dict with the structure of `like` (stacked or not)."""
  path = os.path.join(os.fspath(adapter_dir), "adapter_model.safetensors")
  if not os.path.exists(path):
    raise CheckpointError(f"no adapter_model.safetensors in {adapter_dir}")
  flat_like = traverse_util.flatten_dict(unstack_layers(like))
  out = {}
  with safe_open(path, framework="numpy") as f:
    keys = set(f.keys())
    for p, ref in flat_like.items():
      name = f"{PEFT_PREFIX}{hf_name(p)}.weight"
      if name not in keys:
        raise CheckpointError(f"{path}: missing adapter tensor {name}")
      arr = f.get_tensor(name)
      if arr.shape != tuple(ref.shape):
        raise CheckpointError(f"{path}: tensor {name} has shape {arr.shape}, expected {ref.shape}")
      out[p] = jnp.asarray(arr, ref.dtype)
  lora = traverse_util.unflatten_dict(out)
  return stack_layers(lora) if is_stacked(like) else lora
