"""In-graph reductions over the client axis (axis 0 of every leaf)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

PyTree = object


def client_weights(num_samples_c: jax.Array, valid_c: jax.Array, *, uniform: bool) -> jax.Array:
  """Normalised aggregation weights [C]: sample counts (or 1) of valid clients, summing to 1.

  All zeros when no client is valid (the caller then leaves the global state unchanged).
  """
  raw = jnp.where(valid_c, 1.0 if uniform else num_samples_c.astype(jnp.float32), 0.0)
  total = jnp.sum(raw)
  return jnp.where(total > 0, raw / jnp.where(total > 0, total, 1.0), 0.0)


def weighted_mean(tree_c: PyTree, weights_c: jax.Array) -> PyTree:
  """sum_c w_c x_c for every leaf [C, ...] -> [...] (float32 accumulation)."""
  return jax.tree.map(
      lambda x: jnp.einsum("c,c...->...", weights_c, x.astype(jnp.float32)).astype(x.dtype),
      tree_c)


def tree_sub(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.subtract, a, b)


def tree_add(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.add, a, b)


def tree_scale(a: PyTree, s) -> PyTree:
  return jax.tree.map(lambda x: x * s, a)


def tree_sq_norm(a: PyTree) -> jax.Array:
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(a))


def all_finite_per_client(tree_c: PyTree) -> jax.Array:
  """[C] bool: every element of client c's leaves is finite."""
  leaves = jax.tree.leaves(tree_c)
  ok = jnp.ones((leaves[0].shape[0],), bool)
  for x in leaves:
    ok &= jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)
  return ok


def broadcast_clients(tree: PyTree, num: int) -> PyTree:
  """Stacks `num` copies of a tree on a new leading axis."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (num,) + x.shape), tree)
