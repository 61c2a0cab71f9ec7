"""Client-level DP-FedAvg (McMahan et al. 2018), fixed or adaptive clipping (Andrew et al. 2021).

On the server, for the round's m clients (updates u_c = local_c - global, flattened to [m, D]):
    mean~ = (sum_valid u_c * min(1, C / ||u_c||) + N(0, (z_u C)^2 I)) / m
Every client weighs the same (1/m, with m the fixed number of clients per round, never the data
dependent count of valid ones; under Poisson client sampling m = q N, the expected count, never
the realized one); mean~ then goes through the algorithm's server optimizer. Under Poisson
sampling a round with no valid client still releases its noise (`releases_when_empty`): leaving
the adapter unchanged would tell that the sample was empty.

Noise goes only on the coordinates the algorithm trains (`trained_d`): FFA-LoRA's frozen A gets
neither update nor noise. The server's noise key is its own secret (secret.py).

Adaptive clipping (Andrew et al., Alg. 1): each client also sends the bit b_c = [||u_c|| <= C],
shifted by -1/2 so that adding or removing one client moves the sum by at most 1/2:
    b~ = (sum_valid (b_c - 1/2) + N(0, sigma_b^2)) / m + 1/2,   C <- C * exp(-eta (b~ - gamma))
so C moves geometrically toward the gamma-quantile of the update norms. The two releases (update
sum of sensitivity C with noise z_u C, shifted count of sensitivity 1/2 with noise sigma_b) share
the budget of one Gaussian mechanism of multiplier z:  z^-2 = z_u^-2 + (2 sigma_b)^-2.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AdaptiveClipping:
  """Andrew et al.'s geometric quantile update: target quantile gamma, step eta, count noise."""

  target_quantile: float = 0.5
  learning_rate: float = 0.2
  count_noise: float = 0.0  # sigma_b of the clipped-count sum

  def __post_init__(self):
    if not 0 < self.target_quantile < 1 or self.learning_rate <= 0 or self.count_noise < 0:
      raise ValueError(f"adaptive clipping needs 0 < quantile < 1, lr > 0, noise >= 0: {self}")


@dataclasses.dataclass(frozen=True)
class ClientDP:
  """DP-FedAvg settings: total noise multiplier z, (initial) clip norm C, the divisor m (clients
  per round, or q N under Poisson client sampling at rate `sampling_rate` q > 0)."""

  noise_multiplier: float
  clip_norm: float
  clients_per_round: float
  adaptive: AdaptiveClipping | None = None
  sampling_rate: float = 0.0

  def __post_init__(self):
    if (self.noise_multiplier < 0 or self.clip_norm <= 0 or not self.clients_per_round > 0
        or not 0 <= self.sampling_rate < 1):
      raise ValueError(f"DP-FedAvg needs z >= 0, C > 0, m > 0, 0 <= q < 1: {self}")
    a = self.adaptive
    if a is not None and self.noise_multiplier > 0 and 2 * a.count_noise <= self.noise_multiplier:
      raise ValueError(f"adaptive clipping needs count noise sigma_b > z / 2 "
                       f"({a.count_noise} <= {self.noise_multiplier / 2}) to leave noise for "
                       "the update (Andrew et al., Thm. 1)")

  @property
  def releases_when_empty(self) -> bool:
    """Poisson sampling: a round releases its noised mean even with no valid client."""
    return self.sampling_rate > 0

  @property
  def update_noise_multiplier(self) -> float:
    """z_u: the update's share of the total multiplier z (all of it with fixed clipping)."""
    z = self.noise_multiplier
    if self.adaptive is None or z == 0:
      return z
    return (z ** -2 - (2 * self.adaptive.count_noise) ** -2) ** -0.5

  def init_state(self) -> dict:
    return {"clip_norm": jnp.asarray(self.clip_norm, jnp.float32)}

  def releases(self, update_cd: jax.Array, valid_c: jax.Array, state: dict
               ) -> tuple[jax.Array, jax.Array]:
    """The pre-noise releases: (sum of clipped valid updates [D], shifted clipped count []).

    Adding or removing one client moves the first by at most C and the second by at most 1/2.
    """
    clip = state["clip_norm"]
    norms_c = jnp.linalg.norm(update_cd.astype(jnp.float32), axis=1)
    scale_c = jnp.where(valid_c, clip / jnp.maximum(norms_c, clip), 0.0)
    shifted_c = jnp.where(valid_c, (norms_c <= clip).astype(jnp.float32) - 0.5, 0.0)
    return scale_c @ update_cd.astype(jnp.float32), jnp.sum(shifted_c)

  def aggregate(self, update_cd: jax.Array, valid_c: jax.Array, state: dict,
                noise_key: jax.Array, trained_d: jax.Array | None = None
                ) -> tuple[jax.Array, dict]:
    """(noised mean of clipped updates [D], new state {"clip_norm"}).

    Args:
      update_cd: [C, D] updates. valid_c: [C] bool. noise_key: uint32 [2], the server's secret.
      trained_d: [D] bool, the coordinates clients train (None: all); no noise elsewhere.
    """
    clip = state["clip_norm"]
    sum_d, shifted_count = self.releases(update_cd, valid_c, state)
    k_update, k_count = jax.random.split(jax.random.wrap_key_data(noise_key))
    noise_d = jax.random.normal(k_update, update_cd.shape[1:], jnp.float32)
    noise_d = self.update_noise_multiplier * clip * noise_d
    if trained_d is not None:
      noise_d = jnp.where(trained_d, noise_d, 0.0)
    mean_d = ((sum_d + noise_d) / self.clients_per_round).astype(update_cd.dtype)
    a = self.adaptive
    if a is None:
      return mean_d, state
    noised_count = shifted_count + a.count_noise * jax.random.normal(k_count)
    frac = noised_count / self.clients_per_round + 0.5
    return mean_d, {"clip_norm": clip * jnp.exp(-a.learning_rate * (frac - a.target_quantile))}
