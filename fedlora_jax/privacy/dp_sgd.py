"""Example-level (patient-level) DP-SGD inside each hospital.

One local step of a client on a batch of B rows (Poisson-sampled, padded to a fixed B rows;
padding rows have an all-zero loss_mask, so their loss and gradient are exactly 0):
    g_i   = grad of the objective on example i alone        (vmap over the batch, [B, ...])
    g~    = (sum_i g_i * min(1, C / ||g_i||) + N(0, (z C)^2 I)) / E[B]
with norms taken over the trainable leaves only. g~ replaces the step's gradient; the local
optimizer (Adam, clipping, ...) and SCAFFOLD's correction are post-processing. A data-independent
term of the objective (FedProx's proximal pull) enters every example's gradient, so it is clipped
and averaged with it. One step is one
`TruncatedSubsampledGaussianDpEvent` (see accounting.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
NOISE_STREAM = 0x0D9  # fold_in tag separating the DP noise from dropout on the same step key


def clip_factors(grads_b: PyTree, clip_norm: float) -> jax.Array:
  """[B] min(1, C / ||g_b||) for per-example gradient trees with leading axis B."""
  sq_b = sum(jnp.sum(jnp.square(g.reshape(g.shape[0], -1).astype(jnp.float32)), axis=1)
             for g in jax.tree.leaves(grads_b))
  norm_b = jnp.sqrt(sq_b)
  return clip_norm / jnp.maximum(norm_b, clip_norm)


@dataclasses.dataclass(frozen=True)
class ExampleDP:
  """DP-SGD settings: noise multiplier z, per-example clip norm C, expected batch size E[B]."""

  noise_multiplier: float
  clip_norm: float
  expected_batch_size: float

  def __post_init__(self):
    if self.noise_multiplier < 0 or self.clip_norm <= 0 or self.expected_batch_size <= 0:
      raise ValueError(f"DP-SGD needs z >= 0, C > 0, E[B] > 0: {self}")

  def grads(self, objective: Callable, params: PyTree, batch: dict[str, jax.Array],
            key: jax.Array, trainable: PyTree) -> tuple[PyTree, jax.Array]:
    """The noised mean clipped gradient and the mean loss over the real rows.

    Args:
      objective: (params, batch) -> (value, loss), value differentiated; batch leaves [b, S].
      batch: leaves [B, S]; rows with an all-zero `loss_mask` are padding.
      key: this step's key (the noise uses fold_in(key, NOISE_STREAM)).
      trainable: bool tree like params; frozen leaves get zero gradient and no noise.
    """
    def one(example):
      return jax.grad(objective, has_aux=True)(params, jax.tree.map(lambda x: x[None], example))

    grads_b, loss_b = jax.vmap(one)(batch)
    grads_b = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads_b, trainable)
    scale_b = clip_factors(grads_b, self.clip_norm)
    summed = jax.tree.map(lambda g: jnp.einsum("b,b...->...", scale_b, g.astype(jnp.float32)),
                          grads_b)
    leaves, treedef = jax.tree.flatten(summed)
    keys = jax.random.split(jax.random.fold_in(key, NOISE_STREAM), len(leaves))
    std = self.noise_multiplier * self.clip_norm
    noised = [s + std * jax.random.normal(k, s.shape, jnp.float32) for s, k in zip(leaves, keys)]
    grads = jax.tree.map(lambda n, p, t: (n / self.expected_batch_size).astype(p.dtype) if t
                         else jnp.zeros_like(p), jax.tree.unflatten(treedef, noised), params,
                         trainable)
    real_b = jnp.any(batch["loss_mask"] > 0, axis=-1)
    loss = jnp.sum(jnp.where(real_b, loss_b, 0.0)) / jnp.maximum(jnp.sum(real_b), 1)
    return grads, loss
