"""Handwritten LoRA, laid out exactly as Hugging Face PEFT stores it.

Every projection is a `Linear` holding the frozen base `weight` [out, in] (HF layout, so loading a
checkpoint is a by-name copy). `add_lora` attaches to the targeted projections two `LoRAParam`s,
`lora_A` [r, in] and `lora_B` [out, r] -- PEFT's `lora_A.weight` / `lora_B.weight` -- so export to
a PEFT adapter is a rename, not even a transpose. The output is

    y = x W^T + b + scaling * dropout(x) A^T B^T,   scaling = alpha / r   (rsLoRA: alpha / sqrt(r)).

A is initialised like PEFT (Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))) and
B with zeros, so the adapted model equals the base model at init. `LoRAParam` is a distinct
variable type: `nnx.split(model, LoRAParam, ...)` separates what is trained from the frozen base,
and gradients are only ever taken with respect to the LoRA state. Targets are chosen by a regex
over module paths such as "model/layers/3/self_attn/q_proj" (or a list of module names). LoRA
weights are kept in float32 whatever the base dtype; `merge_lora` folds scaling * B A into the
base weights for export or fast inference.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from fedlora_jax.models.partitioning import LogicalAxes, param
from fedlora_jax.models.quant import QuantFormat, QuantizedWeight, dequantize

BASE_MATMUL = "base_matmul"  # checkpoint name of every frozen projection's output
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRAParam(nnx.Param):
  """A trainable LoRA weight (everything else in the model is frozen)."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Which projections get adapters, and how they are scaled.

  Attributes:
    rank: r.
    alpha: lora_alpha.
    target_modules: module names (matched against the last path component), or
      `target_regex` when given (full match against the "/"-joined module path).
    use_rslora: scale by alpha / sqrt(r) instead of alpha / r.
    dropout: dropout rate on the LoRA input during training.
  """

  rank: int = 8
  alpha: float = 16.0
  target_modules: tuple[str, ...] = ALL_PROJECTIONS
  target_regex: str | None = None
  use_rslora: bool = False
  dropout: float = 0.0

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
    unknown = set(self.target_modules) - set(ALL_PROJECTIONS)
    if unknown and self.target_regex is None:
      raise ValueError(f"unknown LoRA target modules {sorted(unknown)}; known: {ALL_PROJECTIONS}")

  @property
  def scaling(self) -> float:
    return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

  def targets(self, path: str) -> bool:
    """Whether the module at this "/"-joined path gets an adapter."""
    if self.target_regex is not None:
      return re.fullmatch(self.target_regex, path) is not None
    return path.rsplit("/", 1)[-1] in self.target_modules


class Linear(nnx.Module):
  """y = x W^T (+ b) with an optional LoRA branch. W: [out, in] as in HF; `axes` names its two
  logical axes (out, in), e.g. ("heads", "embed"). With `quant`, W is stored as a
  `QuantizedWeight` (codes and scales, `models.quant`) and dequantized inside the matmul."""

  def __init__(self, in_features: int, out_features: int, *, axes: LogicalAxes, use_bias: bool,
               param_dtype, dtype, rngs: nnx.Rngs, quant: QuantFormat | None = None):
    init = nnx.initializers.normal(0.02)
    w = init(rngs.params(), (out_features, in_features), param_dtype)
    self.weight = param(w, axes) if quant is None else param(
        quant.quantize(w), axes, quantized=(quant, jnp.dtype(param_dtype).name))
    self.bias = nnx.data(param(jnp.zeros((out_features,), param_dtype), axes[:1])
                         if use_bias else None)
    self.lora_A = nnx.data(None)
    self.lora_B = nnx.data(None)
    self.lora_scaling = 0.0
    self.lora_dropout = 0.0
    self.in_features, self.out_features = in_features, out_features
    self.dtype = dtype

  def __call__(self, x_bti: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
    """x: [..., in] -> [..., out]."""
    x = x_bti.astype(self.dtype)
    y = self.base(x)
    if self.lora_A is not None:
      if dropout_rng is not None and self.lora_dropout > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - self.lora_dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - self.lora_dropout), 0).astype(x.dtype)
      y = y + self.lora_up(jnp.einsum("...i,ri->...r", x, self.lora_A[...].astype(self.dtype)))
    return y

  def base(self, x: jax.Array) -> jax.Array:
    """The frozen projection x W^T (+ b), [..., in] -> [..., out], named BASE_MATMUL for remat."""
    y = jnp.einsum("...i,oi->...o", x.astype(self.dtype), self.weight_value())
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return checkpoint_name(y, BASE_MATMUL)

  def weight_value(self) -> jax.Array:
    """W [..., out, in] in the compute dtype (dequantized when stored quantized)."""
    w = self.weight.get_value()
    return dequantize(w, self.dtype) if isinstance(w, QuantizedWeight) else w.astype(self.dtype)

  def lora_up(self, xa: jax.Array) -> jax.Array:
    """scaling * (x A^T) B^T from x A^T [..., r] -> [..., out]."""
    b_or = self.lora_B[...].astype(self.dtype)
    return self.lora_scaling * jnp.einsum("...r,or->...o", xa, b_or)

  def delta_weight(self) -> jax.Array:
    """scaling * B A, [..., out, in] float32 (zeros without LoRA; [L, out, in] when stacked)."""
    if self.lora_A is None:
      return jnp.zeros(self.weight.shape, jnp.float32)
    return self.lora_scaling * (self.lora_B[...] @ self.lora_A[...])


def projections(linears: Sequence[Linear], x_bti: jax.Array,
                rngs: Sequence[jax.Array | None], *, fuse: bool) -> list[jax.Array]:
  """The outputs of several projections of the same input x [..., in] (q/k/v, or gate/up).

  With `fuse`, when all of them carry LoRA without dropout, their A matrices run as one
  concatenated matmul x [A_1; A_2; ...]^T ([..., r_1 + r_2 + ...]) instead of one small matmul
  each; the result equals calling each projection (with its dropout key in `rngs`) on its own.
  """
  if not fuse or any(lin.lora_A is None or lin.lora_dropout > 0.0 for lin in linears):
    return [lin(x_bti, rng) for lin, rng in zip(linears, rngs)]
  x = x_bti.astype(linears[0].dtype)
  a_ri = jnp.concatenate([lin.lora_A[...] for lin in linears], axis=0).astype(x.dtype)
  xa = jnp.einsum("...i,ri->...r", x, a_ri)
  ends = list(itertools.accumulate(lin.lora_A.shape[0] for lin in linears))
  return [lin.base(x) + lin.lora_up(xa[..., end - lin.lora_A.shape[0]:end])
          for lin, end in zip(linears, ends)]


def iter_linears(model: nnx.Module):
  """Yields ("/"-joined module path, Linear) for every projection in the model."""
  for path, module in nnx.iter_graph(model):
    if isinstance(module, Linear):
      yield "/".join(str(p) for p in path), module


def layer_paths(path: str, lin: Linear) -> list[str]:
  """The per-layer module paths a projection stands for: itself, or, stacked ([L, out, in] under
  "model/layers/..."), "model/layers/<i>/..." for each layer i."""
  if len(lin.weight.shape) == 2:
    return [path]
  return [path.replace("/layers/", f"/layers/{i}/", 1) for i in range(lin.weight.shape[0])]


def add_lora(model: nnx.Module, config: LoRAConfig, *, rngs: nnx.Rngs) -> list[str]:
  """Attaches LoRA A (Kaiming-uniform) and B (zeros) to every targeted projection, in place.

  Returns the adapted module paths; raises if the config targets nothing.
  """
  targets: list[tuple[Linear, list[str]]] = []
  for path, lin in iter_linears(model):
    paths = layer_paths(path, lin)
    chosen = [config.targets(p) for p in paths]
    if not any(chosen):
      continue
    if not all(chosen):
      raise ValueError(
          f"with model.scan_layers the layers are stacked, so LoRA adapts {path} in every layer "
          f"or in none; target_regex {config.target_regex!r} picks layers "
          f"{[i for i, c in enumerate(chosen) if c]} of {len(paths)}")
    targets.append((lin, paths))
  # Keys drawn layer by layer, projection by projection, as a layer loop draws them, so a model
  # with stacked layers gets exactly the adapters of the same model without.
  num_layers = len(targets[0][1]) if targets else 0
  keys = [[rngs.lora() for _ in targets] for _ in range(num_layers)]
  adapted = []
  for j, (lin, paths) in enumerate(targets):
    bound = 1.0 / math.sqrt(lin.in_features)  # kaiming_uniform_(a=sqrt(5)) as in PEFT
    a = [jax.random.uniform(keys[i][j], (config.rank, lin.in_features), jnp.float32, -bound, bound)
         for i in range(num_layers)]
    stacked = len(lin.weight.shape) == 3
    lin.lora_A = LoRAParam(jnp.stack(a) if stacked else a[0])
    lead = tuple(lin.weight.shape[:-2])  # (L,) when stacked
    lin.lora_B = LoRAParam(jnp.zeros(lead + (lin.out_features, config.rank), jnp.float32))
    lin.lora_scaling = config.scaling
    lin.lora_dropout = config.dropout
    adapted.extend(paths)
  if not adapted:
    raise ValueError(f"LoRA config {config} matches no projection of the model")
  return adapted


def merge_lora(model: nnx.Module) -> None:
  """Folds scaling * B A into each adapted base weight and removes the adapters, in place."""
  for path, lin in iter_linears(model):
    if lin.lora_A is not None:
      if isinstance(lin.weight.get_value(), QuantizedWeight):
        raise ValueError(f"{path}: cannot fold LoRA into a quantized base weight "
                         "(model.quantize); merge over the float base instead")
      w = lin.weight[...]
      lin.weight[...] = (w.astype(jnp.float32) + lin.delta_weight()).astype(w.dtype)
      lin.lora_A = None
      lin.lora_B = None


def lora_pairs(lora_tree: dict) -> list[tuple[tuple, dict]]:
  """(path, {"lora_A": A [..., r, in], "lora_B": B [..., out, r]}) for each adapter in a pure dict."""
  pairs: list[tuple[tuple, dict]] = []

  def walk(node, path: tuple):
    if isinstance(node, dict):
      if "lora_A" in node and "lora_B" in node:
        pairs.append((path, node))
        return
      for k in node:
        walk(node[k], path + (k,))

  walk(lora_tree, ())
  return pairs


def count_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def target_names(paths: Sequence[str]) -> list[str]:
  """Distinct projection names among adapted paths (PEFT's `target_modules`)."""
  return sorted({p.rsplit("/", 1)[-1] for p in paths})
