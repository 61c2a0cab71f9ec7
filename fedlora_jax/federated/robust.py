"""Byzantine-robust aggregation rules on flattened client updates, in-graph.

Every rule maps updates x_cd [C, D] and a validity mask valid_c [C] (clients excluded by the
ledger or for non-finite updates) to one aggregate [D], using the valid rows only; the number of
valid rows v is dynamic, shapes are static. Definitions follow byzfl (Allouah et al.), which the
tests use as the reference:
  median            coordinate-wise median
  trimmed_mean      per coordinate, drop the f smallest and f largest, average the rest
  krum              the update with the least sum of squared distances to its v - f - 1
                    nearest neighbours (Blanchard et al. 2017)
  multi_krum        the plain (unweighted) mean of the v - f updates with the least Krum scores;
                    never weighted by self-reported sample counts, which an attacker controls
  geometric_median  smoothed Weiszfeld iterations from 0 (RFA, Pillutla et al. 2022)
Norm bounding (`bound_norms`) clips each update to a radius first and composes with any rule.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "geometric_median")


def bound_norms(x_cd: jax.Array, radius: float) -> jax.Array:
  """Each row scaled to norm <= radius: x * min(1, radius / ||x||)."""
  norms_c = jnp.linalg.norm(x_cd, axis=1)
  return x_cd * (radius / jnp.maximum(norms_c, radius))[:, None]


def _mean(x_cd, valid_c):
  w_c = valid_c.astype(x_cd.dtype)
  return w_c @ x_cd / jnp.maximum(jnp.sum(w_c), 1.0)


def _sorted_valid_first(x_cd, valid_c):
  """Columns sorted ascending over the valid rows, invalid rows (as +inf) last."""
  return jnp.sort(jnp.where(valid_c[:, None], x_cd, jnp.inf), axis=0)


def coordinate_median(x_cd: jax.Array, valid_c: jax.Array) -> jax.Array:
  s_cd = _sorted_valid_first(x_cd, valid_c)
  v = jnp.sum(valid_c)
  lo, hi = (v - 1) // 2, v // 2  # the middle one (v odd) or two (v even)
  return 0.5 * (s_cd[lo] + s_cd[hi])


def trimmed_mean(x_cd: jax.Array, valid_c: jax.Array, f: int) -> jax.Array:
  s_cd = _sorted_valid_first(x_cd, valid_c)
  v = jnp.sum(valid_c)
  pos_c = jnp.arange(x_cd.shape[0])
  keep_c = (pos_c >= f) & (pos_c < v - f)
  return jnp.sum(jnp.where(keep_c[:, None], s_cd, 0.0), axis=0) / jnp.maximum(v - 2 * f, 1)


def krum_scores(x_cd: jax.Array, valid_c: jax.Array, f: int) -> jax.Array:
  """[C] Krum scores: sum of squared distances to the v - f - 1 nearest valid others (inf for
  invalid rows)."""
  sq_c = jnp.sum(x_cd * x_cd, axis=1)
  d_cc = jnp.maximum(sq_c[:, None] + sq_c[None, :] - 2.0 * x_cd @ x_cd.T, 0.0)
  c = x_cd.shape[0]
  others = valid_c[None, :] & ~jnp.eye(c, dtype=bool)
  d_cc = jnp.sort(jnp.where(others, d_cc, jnp.inf), axis=1)
  k = jnp.sum(valid_c) - f - 1
  near_cc = jnp.arange(c)[None, :] < k
  scores = jnp.sum(jnp.where(near_cc, d_cc, 0.0), axis=1)
  return jnp.where(valid_c, scores, jnp.inf)


def krum(x_cd: jax.Array, valid_c: jax.Array, f: int) -> jax.Array:
  return x_cd[jnp.argmin(krum_scores(x_cd, valid_c, f))]


def multi_krum(x_cd: jax.Array, valid_c: jax.Array, f: int) -> jax.Array:
  scores_c = krum_scores(x_cd, valid_c, f)
  rank_c = jnp.argsort(jnp.argsort(scores_c))
  chosen_c = valid_c & (rank_c < jnp.sum(valid_c) - f)
  return _mean(x_cd, chosen_c)


def geometric_median(x_cd: jax.Array, valid_c: jax.Array, *, nu: float, iters: int) -> jax.Array:
  """Smoothed Weiszfeld: z <- sum_c b_c x_c / sum_c b_c, b_c = 1 / max(||x_c - z||, nu)."""
  def step(z_d, _):
    dist_c = jnp.maximum(jnp.linalg.norm(x_cd - z_d, axis=1), nu)
    b_c = jnp.where(valid_c, 1.0 / dist_c, 0.0)
    return b_c @ x_cd / jnp.sum(b_c), None
  z_d, _ = jax.lax.scan(step, jnp.zeros(x_cd.shape[1], x_cd.dtype), None, length=iters)
  return z_d


@dataclasses.dataclass(frozen=True)
class RobustRule:
  """A server-side robust aggregation rule (see module docstring).

  Attributes:
    name: one of RULES ("mean" keeps the algorithm's own weighted aggregation).
    f: Byzantine clients tolerated (Krum / Multi-Krum's f; trimmed mean drops f from each end).
    norm_bound: > 0 clips every update to this norm before the rule (also before "mean").
    gm_nu / gm_iters: geometric median smoothing and Weiszfeld iterations.
  """

  name: str = "mean"
  f: int = 1
  norm_bound: float = 0.0
  gm_nu: float = 0.1
  gm_iters: int = 3

  def __post_init__(self):
    if self.name not in RULES:
      raise ValueError(f"unknown robust rule {self.name!r}; known: {', '.join(RULES)}")
    if self.f < 0 or self.norm_bound < 0 or self.gm_nu <= 0 or self.gm_iters < 1:
      raise ValueError(f"robust rule parameters out of range: {self}")

  @property
  def active(self) -> bool:
    return self.name != "mean" or self.norm_bound > 0

  def check_clients(self, num_round_clients: int) -> None:
    if self.name in ("trimmed_mean", "krum", "multi_krum") and 2 * self.f >= num_round_clients:
      raise ValueError(f"robust rule {self.name} with f={self.f} needs more than {2 * self.f} "
                       f"clients per round, got {num_round_clients}")

  def min_valid(self) -> int:
    """The fewest valid clients the rule is defined for: Krum needs v - f - 1 >= 1 neighbours,
    Multi-Krum v - f >= 2 updates, the trimmed mean v - 2f >= 1 kept values."""
    return {"trimmed_mean": 2 * self.f + 1, "krum": self.f + 2,
            "multi_krum": self.f + 2}.get(self.name, 1)

  def enough(self, valid_c: jax.Array) -> jax.Array:
    """Bool []: whether the round's valid clients are enough for the rule (else the round must
    not aggregate: the rule would return one client's update or zeros)."""
    return jnp.sum(valid_c) >= self.min_valid()

  def bound(self, x_cd: jax.Array) -> jax.Array:
    return bound_norms(x_cd, self.norm_bound) if self.norm_bound > 0 else x_cd

  def aggregate(self, x_cd: jax.Array, valid_c: jax.Array, weights_c: jax.Array) -> jax.Array:
    """[D] robust aggregate of the (norm-bounded) valid rows; "mean" uses `weights_c`."""
    x_cd = self.bound(x_cd)
    if self.name == "mean":
      return weights_c @ x_cd
    if self.name == "median":
      return coordinate_median(x_cd, valid_c)
    if self.name == "trimmed_mean":
      return trimmed_mean(x_cd, valid_c, self.f)
    if self.name == "krum":
      return krum(x_cd, valid_c, self.f)
    if self.name == "multi_krum":
      return multi_krum(x_cd, valid_c, self.f)
    return geometric_median(x_cd, valid_c, nu=self.gm_nu, iters=self.gm_iters)
