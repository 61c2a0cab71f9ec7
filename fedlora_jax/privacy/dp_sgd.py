"""Example-level DP-SGD inside each hospital: the unit is one training record.

One local step of a client on a batch of B rows (Poisson-sampled, padded to a fixed B rows; a
padding row has an all-zero loss_mask):
    g_i   = grad of the objective on record i alone            (per-example, [B, ...])
    g~    = (sum_{i real} g_i * min(1, C / ||g_i||) + N(0, (z C)^2 I)) / E[B]
with norms over the trainable leaves only. Padding rows contribute exactly zero, whatever the
objective adds to every row (FedProx's proximal pull is data-independent, yet it has a gradient
on a padding row too): adding or removing one record moves the clipped sum by at most C.
g~ replaces the step's gradient; the local optimizer, clipping and SCAFFOLD's correction are
post-processing. One step is one `TruncatedSubsampledGaussianDpEvent` (accounting.py).

Clipping and noise are jax-privacy's (`clipping.clipped_grad` with `is_padding_example`,
`noise_addition.gaussian_privatizer`); the noise key is the hospital's secret (secret.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax_privacy import clipping, noise_addition

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ExampleDP:
  """DP-SGD settings: noise multiplier z (one for every hospital, or a tuple of each client id's
  own z: `privacy.calibration="per_client"`), per-example clip norm C, expected batch E[B]."""

  noise_multiplier: float | tuple[float, ...]
  clip_norm: float
  expected_batch_size: float

  def __post_init__(self):
    zs = (self.noise_multiplier if isinstance(self.noise_multiplier, tuple)
          else (self.noise_multiplier,))
    if not zs or min(zs) < 0 or self.clip_norm <= 0 or self.expected_batch_size <= 0:
      raise ValueError(f"DP-SGD needs z >= 0, C > 0, E[B] > 0: {self}")

  def slot_noise(self, client_ids: jax.Array) -> jax.Array:
    """[C] float32: the z of each slot's client (a padding slot, id -1, gets the first's)."""
    if not isinstance(self.noise_multiplier, tuple):
      return jnp.full(client_ids.shape, self.noise_multiplier, jnp.float32)
    table = jnp.asarray(self.noise_multiplier, jnp.float32)
    return table[jnp.clip(client_ids, 0, len(self.noise_multiplier) - 1)]

  def clipped_sum(self, objective: Callable, params: PyTree, batch: dict[str, jax.Array],
                  trainable: PyTree) -> tuple[PyTree, jax.Array]:
    """(sum over real rows of the clipped per-example gradients, per-row losses [B]).

    The pre-noise release: its change when one record is added or removed is at most C.
    """
    def frozen_to_zero(g):
      return jax.tree.map(lambda x, t: x if t else jnp.zeros_like(x), g, trainable)

    grad_fn = clipping.clipped_grad(objective, has_aux=True, l2_clip_norm=self.clip_norm,
                                    batch_argnums=1, pre_clipping_transform=frozen_to_zero,
                                    dtype=jnp.float32)
    padding_b = ~jnp.any(batch["loss_mask"] > 0, axis=-1)
    summed, aux = grad_fn(params, batch, is_padding_example=padding_b)
    return summed, aux.aux

  def grads(self, objective: Callable, params: PyTree, batch: dict[str, jax.Array],
            noise_key: jax.Array, trainable: PyTree,
            noise_multiplier: jax.Array | None = None) -> tuple[PyTree, jax.Array]:
    """The noised mean clipped gradient and the mean loss over the real rows.

    Args:
      objective: (params, batch) -> (value, loss), value differentiated; batch leaves [b, S].
      batch: leaves [B, S]; rows with an all-zero `loss_mask` are padding.
      noise_key: uint32 [2], this step's secret noise key (never derived from the config).
      trainable: bool tree like params; frozen leaves get zero gradient and no noise.
      noise_multiplier: this client's z (a scalar, `slot_noise`); needed when z is per client.
    """
    if noise_multiplier is None:
      if isinstance(self.noise_multiplier, tuple):
        raise ValueError("a per-client noise multiplier needs the client's z")
      noise_multiplier = self.noise_multiplier
    summed, loss_b = self.clipped_sum(objective, params, batch, trainable)
    privatizer = noise_addition.gaussian_privatizer(
        stddev=noise_multiplier * self.clip_norm,
        prng_key=jax.random.wrap_key_data(noise_key))
    noised, _ = privatizer.update(summed, privatizer.init(summed))
    grads = jax.tree.map(lambda n, p, t: (n / self.expected_batch_size).astype(p.dtype) if t
                         else jnp.zeros_like(p), noised, params, trainable)
    real_b = jnp.any(batch["loss_mask"] > 0, axis=-1)
    loss = jnp.sum(jnp.where(real_b, loss_b, 0.0)) / jnp.maximum(jnp.sum(real_b), 1)
    return grads, loss
