"""SCAFFOLD (Karimireddy et al., 2020), option II control variates.

Clients correct every gradient by (c - c_i); after K local steps with learning rate lr,
    c_i+ = c_i - c + (x - y_i) / (K lr),
and the server moves c by (1/N) sum over this round's valid clients of (c_i+ - c_i). The formula
assumes plain SGD locally (`local_optimizer="sgd"`); with Adam the correction is a heuristic.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fedlora_jax.federated.algorithms.base import Algorithm, ServerInputs


@dataclasses.dataclass(frozen=True, eq=False)
class Scaffold(Algorithm):
  name: str = "scaffold"
  local_lr: float = 1e-2

  def init_server_state(self, global_lora):
    return {**super().init_server_state(global_lora), "c": jax.tree.map(jnp.zeros_like, global_lora)}

  def init_client_state(self, global_lora):
    return {"c": jax.tree.map(jnp.zeros_like, global_lora)}

  def correct_grads(self, grads, client_state, server_state):
    return jax.tree.map(lambda g, ci, c: g - ci + c, grads, client_state["c"], server_state["c"])

  def client_final(self, client_state, server_state, start, local, num_steps):
    scale = 1.0 / (num_steps * self.local_lr)
    c_new = jax.tree.map(lambda ci, c, x, y: ci - c + (x - y) * scale,
                         client_state["c"], server_state["c"], start, local)
    return {"c": c_new}

  def server_update(self, inp: ServerInputs):
    new_global, server_state, base = super().server_update(inp)
    valid = inp.valid_c.astype(jnp.float32)
    dc = jax.tree.map(
        lambda new, old: jnp.einsum("c,c...->...", valid, new - old) / inp.num_clients,
        inp.new_client_state_c["c"], inp.old_client_state_c["c"])
    server_state = {**server_state, "c": jax.tree.map(jnp.add, server_state["c"], dc)}
    return new_global, server_state, base
