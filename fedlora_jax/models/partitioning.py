"""Logical axis names of the frozen parameters, declared once where each parameter is created.

Every base parameter carries a tuple of logical names, one per axis, as Flax's `out_sharding`
metadata (HF layout, e.g. a projection `weight` [out, in] is ("heads", "embed")). Which mesh axis
each name maps to is decided in one table, `federated.sharding.AxisRules`; the model never names a
mesh axis. LoRA params carry none: they are replicated over the model axis.

Names: "vocab" (V), "embed" (D, the residual stream), "heads" (N * H, query heads),
"kv_heads" (K * H, key/value heads), "mlp" (F), "head_dim" (H, per-head norms).
"""

from __future__ import annotations

from typing import Any

from flax import nnx

LogicalAxes = tuple[str, ...]


def param(value: Any, axes: LogicalAxes, **metadata: Any) -> nnx.Param:
  """A frozen parameter with one logical name per axis (value: an array or a
  `quant.QuantizedWeight`, whose codes and scales take the same names).

  `eager_sharding=False`: the names are only metadata here; the federated round places the arrays
  (Flax would otherwise shard at creation and require a mesh to build any model).
  """
  if len(axes) != len(value.shape):
    raise ValueError(f"logical axes {axes} do not match a parameter of shape {value.shape}")
  return nnx.Param(value, out_sharding=axes, eager_sharding=False, **metadata)
