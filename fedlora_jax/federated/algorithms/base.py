"""The hooks a federated algorithm fills in (fedjax-style client / server split).

A round, for every sampled client c at once (vmapped):
    start_c = client_start(global, state_c)
    K local optimizer steps on  loss(lora) + penalty(lora, start_c), differentiated with
        respect to the `trainable_parts` only (the rest stays bit-identical), each gradient
        clipped, then passed through correct_grads(grads, state_c, server_state)
    state_c' = client_final(state_c, server_state, start_c, local_c, mean_grad_c)
        (mean_grad_c: the mean over the K steps of the clipped, uncorrected gradients)
then on the server, once:
    global', server_state', base' = server_update(ServerInputs(...))
The default server step is FedOpt: the pseudo-gradient -sum_c w_c (local_c - global) goes through
an optax optimizer; `optax.sgd(1.0)` makes that exactly FedAvg's weighted mean.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from fedlora_jax.federated.aggregation import tree_scale, tree_sub, weighted_mean

PyTree = Any


class ServerInputs(NamedTuple):
  """What the server step sees. Leaves of `*_c` trees have a leading client axis [C, ...]."""

  global_lora: PyTree
  server_state: PyTree
  local_c: PyTree  # each client's LoRA after local training
  weights_c: jax.Array  # [C] normalised; 0 for excluded clients
  valid_c: jax.Array  # [C] bool
  old_client_state_c: PyTree
  new_client_state_c: PyTree
  base: PyTree  # frozen base params (only FedEx-LoRA changes them)
  num_clients: int  # all clients in the federation (not just this round's)


@dataclasses.dataclass(frozen=True, eq=False)
class Algorithm:
  """FedAvg / FedOpt; variants subclass and override a hook or two.

  Attributes:
    name: recorded in metrics and the ledger.
    server_optimizer: optax transformation applied to the pseudo-gradient.
    trainable_parts: which of "lora_A" / "lora_B" the clients update.
    updates_base: the server step changes the frozen base (FedEx-LoRA's residual).
  """

  name: str = "fedavg"
  server_optimizer: optax.GradientTransformation = dataclasses.field(
      default_factory=lambda: optax.sgd(1.0))
  trainable_parts: tuple[str, ...] = ("lora_A", "lora_B")
  updates_base: bool = False

  # --- state -----------------------------------------------------------------------------------
  def init_server_state(self, global_lora: PyTree) -> PyTree:
    return {"opt": self.server_optimizer.init(global_lora)}

  def init_client_state(self, global_lora: PyTree) -> PyTree:
    """Persistent state of one client (no client axis); {} when the algorithm keeps none."""
    del global_lora
    return {}

  # --- client ----------------------------------------------------------------------------------
  def client_start(self, global_lora: PyTree, client_state: PyTree) -> PyTree:
    del client_state
    return global_lora

  def penalty(self, lora: PyTree, start: PyTree) -> jax.Array:
    del lora, start
    return jnp.zeros((), jnp.float32)

  def correct_grads(self, grads: PyTree, client_state: PyTree, server_state: PyTree) -> PyTree:
    """grads: the clipped gradient of the trainable parts (a sub-tree of the adapter)."""
    del client_state, server_state
    return grads

  def client_final(self, client_state: PyTree, server_state: PyTree, start: PyTree,
                   local: PyTree, mean_grad: PyTree) -> PyTree:
    """mean_grad: the trainable parts' clipped, uncorrected gradients averaged over the K steps."""
    del server_state, start, local, mean_grad
    return client_state

  # --- server ----------------------------------------------------------------------------------
  def server_update(self, inp: ServerInputs) -> tuple[PyTree, PyTree, PyTree]:
    """FedOpt on the weighted mean update; returns (global, server_state, base)."""
    new_global, opt = fedopt_step(self.server_optimizer, inp.global_lora,
                                  inp.server_state["opt"], inp.local_c, inp.weights_c)
    return new_global, {**inp.server_state, "opt": opt}, inp.base

  def personal_lora(self, global_lora: PyTree, client_state: PyTree) -> PyTree:
    """The adapter client c evaluates with (the global one unless personalised)."""
    return self.client_start(global_lora, client_state)


def fedopt_step(optimizer: optax.GradientTransformation, global_lora: PyTree, opt_state: PyTree,
                local_c: PyTree, weights_c: jax.Array) -> tuple[PyTree, PyTree]:
  """global - opt(-sum_c w_c (local_c - global)): the FedOpt server step (Reddi et al. 2021)."""
  mean_delta = weighted_mean(jax.tree.map(lambda l, g: l - g[None], local_c, global_lora),
                             weights_c)
  pseudo_grad = tree_scale(mean_delta, -1.0)
  updates, opt_state = optimizer.update(pseudo_grad, opt_state, global_lora)
  return optax.apply_updates(global_lora, updates), opt_state


def select_parts(tree: PyTree, other: PyTree, parts: tuple[str, ...]) -> PyTree:
  """Leaves named in `parts` from `tree`, the rest from `other`."""
  return jax.tree_util.tree_map_with_path(
      lambda p, a, b: a if p[-1].key in parts else b, tree, other)


def split_parts(tree: dict, parts: tuple[str, ...]) -> tuple[dict, dict]:
  """(the sub-tree of leaves whose last key is in `parts`, the sub-tree of the others).

  Both are nested dicts like `tree` without the other side's leaves, so `jax.grad` over the first
  never differentiates (or allocates gradients for) the second.
  """
  flat = traverse_util.flatten_dict(tree)
  chosen = {k: v for k, v in flat.items() if k[-1] in parts}
  if not chosen:
    raise ValueError(f"no adapter leaf is named {parts}")
  rest = {k: v for k, v in flat.items() if k[-1] not in parts}
  return traverse_util.unflatten_dict(chosen), traverse_util.unflatten_dict(rest)


def merge_parts(a: dict, b: dict) -> dict:
  """Inverse of `split_parts`: one nested dict with the leaves of both."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(a),
                                       **traverse_util.flatten_dict(b)})


def like(tree: dict, template: dict) -> dict:
  """The leaves of `tree` at the paths of `template` (e.g. a control variate's trainable part)."""
  flat = traverse_util.flatten_dict(tree)
  return traverse_util.unflatten_dict({k: flat[k] for k in traverse_util.flatten_dict(template)})


__all__ = ["Algorithm", "ServerInputs", "fedopt_step", "like", "merge_parts",
           "select_parts", "split_parts", "tree_sub"]
