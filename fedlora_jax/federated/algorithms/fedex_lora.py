"""FedEx-LoRA (Singhal et al., 2025): exact aggregation by folding the residual into the base.

A' = sum_c w_c A_c and B' = sum_c w_c B_c are what FedAvg gives, but B' A' != sum_c w_c B_c A_c.
The server adds the difference, scaling * (sum_c w_c B_c A_c - B' A'), to the frozen base weight of
each adapted projection, so base + scaling * B' A' equals the exact weighted mean of the client
models. Memory: one transient [out, in] product per adapted projection (computed as a single
[out, C r] x [C r, in] matmul, never [C, out, in]); the base is updated in place (donated).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from fedlora_jax.federated.algorithms.base import Algorithm, ServerInputs
from fedlora_jax.models.lora import lora_pairs


@dataclasses.dataclass(frozen=True, eq=False)
class FedExLoRA(Algorithm):
  name: str = "fedex_lora"
  lora_scaling: float = 1.0
  updates_base: bool = True

  def server_update(self, inp: ServerInputs):
    new_global, server_state, base = super().server_update(inp)
    base = _copy_dicts(base)
    for path, pair_c in lora_pairs(inp.local_c):
      w = inp.weights_c
      exact = jnp.einsum("c,cor,cri->oi", w, pair_c["lora_B"], pair_c["lora_A"])
      g = _get(new_global, path)
      residual = self.lora_scaling * (exact - g["lora_B"] @ g["lora_A"])
      # Unchanged base when no client was valid (all weights 0 -> exact = 0, global unchanged).
      residual = jnp.where(jnp.sum(w) > 0, residual, 0.0)
      node = _get(base, path)
      node["weight"] = (node["weight"].astype(jnp.float32) + residual).astype(node["weight"].dtype)
    return new_global, server_state, base


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _copy_dicts(tree):
  return {k: _copy_dicts(v) for k, v in tree.items()} if isinstance(tree, dict) else tree
