"""Model-poisoning attacks for evaluation, applied in-graph to the attackers' updates.

A compromised hospital trains honestly, then replaces its update u = local - global before
signing it (so the ledger proves who sent the bad update):
  sign_flip  u' = -s u                       (s default 1)
  scale      u' = s u                        (model replacement; s default C, undoing the 1/C mean)
  gaussian   u' ~ N(0, s^2 I)                (s default 1)
  alie       u' = mean - s * std, per coordinate over the round's real clients' honest updates
             ("a little is enough", Baruch et al. 2019; s default their z_max for n clients and
             a attackers)
Only real clients count: padding slots (client id < 0) never attack, and neither the mean and
std of alie nor scale's default s (the number of clients) include them.
"""

from __future__ import annotations

import dataclasses
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("none", "sign_flip", "scale", "gaussian", "alie")


def alie_z(num_clients: int, num_attackers: int) -> float:
  """Baruch et al.'s z_max: s = floor(n/2 + 1) - a supporters needed, z = Phi^-1((n - s) / n)."""
  s = max(num_clients // 2 + 1 - num_attackers, 1)
  p = (num_clients - s) / num_clients
  return NormalDist().inv_cdf(p) if p > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Attack:
  """Which clients attack (ids in [0, N)) and how.

  Attributes:
    kind: one of KINDS.
    attackers: ids of the compromised clients.
    scale: s above; 0 takes the kind's default.
  """

  kind: str = "none"
  attackers: tuple[int, ...] = ()
  scale: float = 0.0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown attack kind {self.kind!r}; known: {', '.join(KINDS)}")
    if self.kind != "none" and not self.attackers:
      raise ValueError(f"attack {self.kind!r} names no attacking clients")

  @property
  def active(self) -> bool:
    return self.kind != "none"

  def _alie_z_table(self, slots: int) -> list[list[float]]:
    """alie's default z [n, a] for every number n in [0, slots] of real clients and a of
    attackers among them (the round's, under partial participation)."""
    return [[alie_z(max(n, 1), min(a, max(n, 1))) for a in range(slots + 1)]
            for n in range(slots + 1)]

  def apply(self, update_cd: jax.Array, client_ids: jax.Array, num_clients: int,
            key: jax.Array) -> jax.Array:
    """Updates [C, D] with the attackers' rows (by `client_ids` [C]) replaced; others unchanged."""
    table = np.zeros(num_clients, bool)
    table[list(self.attackers)] = True
    real_c = client_ids >= 0
    bad_c = real_c & jnp.asarray(table)[jnp.maximum(client_ids, 0)]
    n = jnp.maximum(jnp.sum(real_c), 1).astype(update_cd.dtype)  # the round's real clients
    s = self.scale
    if self.kind == "sign_flip":
      bad_cd = -(s or 1.0) * update_cd
    elif self.kind == "scale":
      bad_cd = (s or n) * update_cd
    elif self.kind == "gaussian":
      bad_cd = (s or 1.0) * jax.random.normal(key, update_cd.shape, update_cd.dtype)
    elif self.kind == "alie":
      z = s or jnp.asarray(self._alie_z_table(update_cd.shape[0]), update_cd.dtype)[
          jnp.sum(real_c), jnp.sum(bad_c)]
      w_c = real_c.astype(update_cd.dtype)[:, None]
      mean_d = jnp.sum(w_c * update_cd, axis=0) / n
      std_d = jnp.sqrt(jnp.sum(w_c * jnp.square(update_cd - mean_d), axis=0) / n)
      bad_cd = jnp.broadcast_to(mean_d - z * std_d, update_cd.shape)
    else:
      return update_cd
    return jnp.where(bad_c[:, None], bad_cd, update_cd)
