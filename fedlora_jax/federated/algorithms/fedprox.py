"""FedProx (Li et al., 2020): a proximal term mu/2 ||w - w_global||^2 in every local loss."""

from __future__ import annotations

import dataclasses

import jax

from fedlora_jax.federated.aggregation import tree_sq_norm, tree_sub
from fedlora_jax.federated.algorithms.base import Algorithm


@dataclasses.dataclass(frozen=True, eq=False)
class FedProx(Algorithm):
  name: str = "fedprox"
  mu: float = 0.01

  def penalty(self, lora, start) -> jax.Array:
    return 0.5 * self.mu * tree_sq_norm(tree_sub(lora, jax.lax.stop_gradient(start)))
