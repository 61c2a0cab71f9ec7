"""FedSA-LoRA (Guo et al., 2025): A is shared and averaged, B stays personal to each client.

Each client keeps its own B across rounds (client state) and starts every round from
(global A, its own B). The global B is still the weighted mean, for clients that have none.
"""

from __future__ import annotations

import dataclasses

from fedlora_jax.federated.algorithms.base import Algorithm, select_parts


@dataclasses.dataclass(frozen=True, eq=False)
class FedSALoRA(Algorithm):
  name: str = "fedsa_lora"

  def init_client_state(self, global_lora):
    return {"lora": global_lora}

  def client_start(self, global_lora, client_state):
    return select_parts(client_state["lora"], global_lora, ("lora_B",))

  def client_final(self, client_state, server_state, start, local, num_steps):
    return {"lora": local}
