"""FedEx-LoRA (Singhal et al., 2025): exact aggregation by folding the residual into the base.

A' = sum_c w_c A_c and B' = sum_c w_c B_c are what FedAvg gives, but B' A' != sum_c w_c B_c A_c.
The server adds the difference, scaling * (sum_c w_c B_c A_c - B' A'), to the frozen base weight of
each adapted projection, so base + scaling * B' A' equals the exact weighted mean of the client
models.

The residual is small (~1e-5 per round) next to a base weight (~1e-2), whose bf16 spacing is
~1e-4: added to a bf16 weight it would mostly round away. So each adapted weight is held as a
double word: the base weight W (its own dtype, what the forward pass uses) and an f32 remainder
L in the server state (`"base_lo"`, [layers, out, in] when the layers are stacked),
with W + L the exact f32 master weight. Every round adds the
residual to L, then moves the part W's dtype can represent into W:
    L += residual;  W' = dtype(W + L);  L -= W' - W      (W' - W is exact in f32)
so no rounding error accumulates: W + L - W_0 equals the sum of the rounds' residuals to f32
precision, and W is always the nearest bf16 to the master weight. For an f32 base this is Kahan
summation. Memory: one f32 [out, in] remainder per adapted projection (server side) and one
transient [out, in] product (a single [out, C r] x [C r, in] matmul, never [C, out, in]).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import traverse_util

from fedlora_jax.federated.algorithms.base import Algorithm, ServerInputs
from fedlora_jax.models.lora import lora_pairs

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True, eq=False)
class FedExLoRA(Algorithm):
  name: str = "fedex_lora"
  lora_scaling: float = 1.0
  updates_base: bool = True

  def init_server_state(self, global_lora):
    lo = {path: jnp.zeros(p["lora_B"].shape[:-1] + p["lora_A"].shape[-1:], jnp.float32)
          for path, p in lora_pairs(global_lora)}
    return {**super().init_server_state(global_lora), "base_lo": traverse_util.unflatten_dict(lo)}

  def server_update(self, inp: ServerInputs):
    new_global, server_state, base = super().server_update(inp)
    base = _copy_dicts(base)
    lo = _copy_dicts(server_state["base_lo"])
    w = inp.weights_c
    for path, pair_c in lora_pairs(inp.local_c):
      exact = jnp.einsum("c,c...or,c...ri->...oi", w, pair_c["lora_B"], pair_c["lora_A"],
                         precision=_HIGHEST)  # [..., out, in]: [L, out, in] when stacked
      g = _get(new_global, path)
      mean_product = jnp.matmul(g["lora_B"], g["lora_A"], precision=_HIGHEST)
      # Unchanged base when no client was valid (all weights 0 -> exact = 0, global unchanged).
      residual = jnp.where(jnp.sum(w) > 0, self.lora_scaling * (exact - mean_product), 0.0)
      node, lo_node = _get(base, path), _get(lo, path[:-1])
      old = node["weight"]
      low = lo_node[path[-1]] + residual
      new = (old.astype(jnp.float32) + low).astype(old.dtype)
      lo_node[path[-1]] = low - (new.astype(jnp.float32) - old.astype(jnp.float32))
      node["weight"] = new
    return new_global, {**server_state, "base_lo": lo}, base


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _copy_dicts(tree):
  return {k: _copy_dicts(v) for k, v in tree.items()} if isinstance(tree, dict) else tree
