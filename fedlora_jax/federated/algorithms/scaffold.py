"""SCAFFOLD (Karimireddy et al., 2020) with control variates from the gradients actually applied.

Every local step applies g - c_i + c, where g is the client's clipped minibatch gradient. After K
steps the client's new control variate is the mean of those clipped gradients,
    c_i+ = (1/K) sum_k clip(g_k),
which is what option II, c_i+ = c_i - c + (x - y_i) / (K lr), computes under plain SGD without
clipping (there x - y_i = lr sum_k (g_k - c_i + c)); unlike that formula it stays the client's
gradient estimate under clipping and with any local optimizer (AdamW, Adam), where option II's
(x - y_i) / (K lr) is no gradient at all. The server moves c by (1/N) sum over this round's valid
clients of (c_i+ - c_i), N the federation's size.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fedlora_jax.federated.algorithms.base import Algorithm, ServerInputs, like


@dataclasses.dataclass(frozen=True, eq=False)
class Scaffold(Algorithm):
  name: str = "scaffold"

  def init_server_state(self, global_lora):
    return {**super().init_server_state(global_lora), "c": jax.tree.map(jnp.zeros_like, global_lora)}

  def init_client_state(self, global_lora):
    return {"c": jax.tree.map(jnp.zeros_like, global_lora)}

  def correct_grads(self, grads, client_state, server_state):
    return jax.tree.map(lambda g, ci, c: g - ci + c, grads, like(client_state["c"], grads),
                        like(server_state["c"], grads))

  def client_final(self, client_state, server_state, start, local, mean_grad):
    del client_state, server_state, start, local
    return {"c": mean_grad}  # every part trains, so this has the adapter's structure

  def server_update(self, inp: ServerInputs):
    new_global, server_state, base = super().server_update(inp)
    valid = inp.valid_c.astype(jnp.float32)
    dc = jax.tree.map(
        lambda new, old: jnp.einsum("c,c...->...", valid, new - old) / inp.num_clients,
        inp.new_client_state_c["c"], inp.old_client_state_c["c"])
    server_state = {**server_state, "c": jax.tree.map(jnp.add, server_state["c"], dc)}
    return new_global, server_state, base
