"""What `FederatedRound` calls for privacy, robustness and attack simulation -- one object.

  client side   `local_grads`: the gradient of each local step (plain, or example-level DP-SGD)
                `attack_updates`: the attackers' updates replaced right after local training,
                before they are signed
  server side   `server_update`: wraps any algorithm's server step; client-level DP-FedAvg or a
                robust rule turns the round's updates into one aggregate update, which every
                client row then carries into the algorithm's own server optimizer
  state         `init_server_state`: adds `server_state["privacy"]` (the adaptive clip norm)
All of it runs inside the round's jitted program. DP noise comes from keys the round is given by
the party that adds it (each hospital's own secret for DP-SGD, the server's for DP-FedAvg; see
privacy/secret.py), never from the state's seeded rng; the simulated attacks (experiments, not
secrets) use the state's rng folded with the round on a tag no client id uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedlora_jax.federated.attacks import Attack
from fedlora_jax.federated.robust import RobustRule
from fedlora_jax.privacy.dp_fedavg import ClientDP
from fedlora_jax.privacy.dp_sgd import ExampleDP

PyTree = Any
ATTACK_TAG = 2**31 - 2  # fold_in tag of the round key outside the client ids' range


def flatten_updates(local_c: PyTree, global_tree: PyTree
                    ) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
  """(updates [C, D] float32 = local_c - global, flattened; a map [D] -> tree like global)."""
  leaves, treedef = jax.tree.flatten(global_tree)
  local_leaves = treedef.flatten_up_to(local_c)
  c = local_leaves[0].shape[0]
  update_cd = jnp.concatenate([(l.astype(jnp.float32) - g.astype(jnp.float32)).reshape(c, -1)
                               for l, g in zip(local_leaves, leaves)], axis=1)
  splits = np.cumsum([g.size for g in leaves])[:-1]

  def unflatten(x_d: jax.Array) -> PyTree:
    parts = jnp.split(x_d, splits)
    return jax.tree.unflatten(treedef, [p.reshape(g.shape).astype(g.dtype)
                                        for p, g in zip(parts, leaves)])
  return update_cd, unflatten


def trained_mask(global_tree: PyTree, trainable_parts: tuple[str, ...]) -> jax.Array:
  """[D] bool over `flatten_updates`' coordinates: True where the leaf's name is trained."""
  flat = jax.tree_util.tree_flatten_with_path(global_tree)[0]
  return jnp.concatenate([jnp.full((leaf.size,), path[-1].key in trainable_parts)
                          for path, leaf in flat])


def round_key(state: dict, tag: int) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(state["rng"], state["round"]), tag)


@dataclasses.dataclass(frozen=True)
class Safeguards:
  """Privacy and robustness plug-ins of a round (the default does nothing).

  Attributes:
    example_dp: example-level DP-SGD (one training record) in every client's local steps.
    client_dp: client-level DP-FedAvg on the server (excludes robust rules: their sensitivity to
      one client is not that of the clipped sum).
    robust: a robust aggregation rule (and norm bound).
    attack: simulated attackers.
  """

  example_dp: ExampleDP | None = None
  client_dp: ClientDP | None = None
  robust: RobustRule = RobustRule()
  attack: Attack = Attack()

  def __post_init__(self):
    if self.client_dp is not None and self.robust.active:
      raise ValueError(f"client-level DP cannot be combined with robust rule {self.robust.name!r}"
                       f" / norm bound {self.robust.norm_bound}: DP-FedAvg clips and averages "
                       "itself")

  @property
  def releases_when_empty(self) -> bool:
    """A round's aggregate is released even when no client is valid (Poisson DP-FedAvg)."""
    return self.client_dp is not None and self.client_dp.releases_when_empty

  def init_server_state(self, server_state: PyTree) -> PyTree:
    if self.client_dp is None:
      return server_state
    return {**server_state, "privacy": self.client_dp.init_state()}

  def algorithm_server_state(self, server_state: PyTree) -> PyTree:
    """The algorithm's own server state, without what `init_server_state` added: what a client
    receives (sites mode; DP-FedAvg's clip norm stays at the server)."""
    if self.client_dp is None:
      return server_state
    return {k: v for k, v in server_state.items() if k != "privacy"}

  def local_grads(self, objective: Callable, params: PyTree, batch: dict, noise_key: jax.Array,
                  trainable: PyTree, noise_multiplier: jax.Array | None = None
                  ) -> tuple[PyTree, jax.Array]:
    """(gradient, loss) of one local step; objective(params, batch) -> (value, loss);
    noise_key: uint32 [2], the hospital's secret key of this step; noise_multiplier: its z when
    z is per client (DP-SGD only)."""
    if self.example_dp is None:
      return jax.grad(objective, has_aux=True)(params, batch)
    return self.example_dp.grads(objective, params, batch, noise_key, trainable,
                                 noise_multiplier)

  def attack_updates(self, trained: tuple, state: dict, client_ids: jax.Array,
                     num_clients: int) -> tuple:
    """`trained` = (local_c, client_states_c, losses_ck) with the attackers' local_c replaced."""
    if not self.attack.active:
      return trained
    local_c, rest = trained[0], trained[1:]
    update_cd, unflatten = flatten_updates(local_c, state["global_lora"])
    update_cd = self.attack.apply(update_cd, client_ids, num_clients,
                                  round_key(state, ATTACK_TAG))
    attacked = jax.vmap(unflatten)(update_cd)
    return (jax.tree.map(lambda g, u: (g[None] + u).astype(g.dtype), state["global_lora"],
                         attacked),) + tuple(rest)

  def server_update(self, algorithm, inp, state: dict, server_noise_key: jax.Array | None = None
                    ) -> tuple[PyTree, PyTree, PyTree]:
    """`algorithm.server_update(inp)`, behind client-level DP or a robust rule when set;
    server_noise_key: uint32 [2], the server's secret key of this round (DP-FedAvg only)."""
    if self.client_dp is None and not self.robust.active:
      return algorithm.server_update(inp)
    self.robust.check_clients(inp.valid_c.shape[0])
    update_cd, unflatten = flatten_updates(inp.local_c, inp.global_lora)
    server_state = dict(inp.server_state)
    if self.client_dp is not None:
      if server_noise_key is None:
        raise ValueError("client-level DP needs the server's secret noise key")
      privacy = server_state.pop("privacy")
      mean_d, privacy = self.client_dp.aggregate(
          update_cd, inp.valid_c, privacy, server_noise_key,
          trained_mask(inp.global_lora, algorithm.trainable_parts))
    else:
      mean_d = self.robust.aggregate(update_cd, inp.valid_c, inp.weights_c)
    merged = jax.tree.map(lambda g, u: g + u, inp.global_lora, unflatten(mean_d))
    c = inp.valid_c.shape[0]
    local_c = jax.tree.map(lambda x: jnp.broadcast_to(x, (c,) + x.shape), merged)
    # Every row is the aggregate: DP-FedAvg's weights need not follow the valid clients (a
    # Poisson round with none still releases its noise); a robust rule keeps them.
    weights_c = jnp.full((c,), 1.0 / c) if self.client_dp is not None else inp.weights_c
    new_g, new_ss, base = algorithm.server_update(
        inp._replace(server_state=server_state, local_c=local_c, weights_c=weights_c))
    if self.client_dp is not None:
      new_ss = {**new_ss, "privacy": privacy}
    return new_g, new_ss, base
