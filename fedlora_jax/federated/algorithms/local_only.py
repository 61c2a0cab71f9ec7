"""Single-client LoRA baseline: every client trains its own adapter alone, nothing is shared.

The reference paper's comparison point. Each client's adapter is its persistent state; the global
adapter never changes.
"""

from __future__ import annotations

import dataclasses

from fedlora_jax.federated.algorithms.base import Algorithm, ServerInputs


@dataclasses.dataclass(frozen=True, eq=False)
class LocalOnly(Algorithm):
  name: str = "local"

  def init_client_state(self, global_lora):
    return {"lora": global_lora}

  def client_start(self, global_lora, client_state):
    return client_state["lora"]

  def client_final(self, client_state, server_state, start, local, mean_grad):
    return {"lora": local}

  def server_update(self, inp: ServerInputs):
    return inp.global_lora, inp.server_state, inp.base

