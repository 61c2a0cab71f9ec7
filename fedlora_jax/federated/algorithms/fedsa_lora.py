"""FedSA-LoRA (Guo et al., 2025): A is shared and averaged, B stays personal to each client.

Each client keeps its own B across rounds (client state) and starts every round from
(global A, its own B). The global B is still the weighted mean of the participants' B; a client
that has never trained (never sampled under partial participation) has no B of its own and uses
the global one, for training and for evaluation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fedlora_jax.federated.algorithms.base import Algorithm, select_parts


@dataclasses.dataclass(frozen=True, eq=False)
class FedSALoRA(Algorithm):
  name: str = "fedsa_lora"

  def init_client_state(self, global_lora):
    return {"lora": global_lora, "trained": jnp.zeros((), bool)}

  def client_start(self, global_lora, client_state):
    own_b = select_parts(client_state["lora"], global_lora, ("lora_B",))
    return jax.tree.map(lambda own, glob: jnp.where(client_state["trained"], own, glob),
                        own_b, global_lora)

  def client_final(self, client_state, server_state, start, local, mean_grad):
    return {"lora": local, "trained": jnp.ones((), bool)}
