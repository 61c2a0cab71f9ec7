"""RMSNorm and rotary position embeddings (HF rotate-half layout, Llama-3 frequency scaling)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from fedlora_jax.models.config import RopeScaling
from fedlora_jax.models.partitioning import LogicalAxes, param


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """RMSNorm over the last axis, computed in float32, returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return (y * weight.astype(jnp.float32)).astype(x.dtype)


class RMSNorm(nnx.Module):
  """HF-compatible RMSNorm: `weight` of shape [dim], initialised to ones."""

  def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32,
               axes: LogicalAxes = ("embed",)):
    self.weight = param(jnp.ones((dim,), param_dtype), axes)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    return rms_norm(x, self.weight[...], self.eps)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> jax.Array:
  """Inverse frequencies [head_dim // 2], with Llama-3 scaling when `scaling` is given."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if scaling is None:
    return inv_freq
  low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
  high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
      scaling.high_freq_factor - scaling.low_freq_factor)
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(is_medium, smoothed, scaled)


def rope_cos_sin(positions_bt: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos and sin tables [B, T, head_dim] for integer positions [B, T] (float32)."""
  freqs_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs_bth, freqs_bth], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
  """Rotates pairs (i, i + H/2) of each head, as HF's `rotate_half` does. x: [B, T, N, H]."""
  half = x_btnh.shape[-1] // 2
  x32 = x_btnh.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  cos, sin = cos_bth[:, :, None, :], sin_bth[:, :, None, :]
  return (x32 * cos + rotated * sin).astype(x_btnh.dtype)


class Embed(nnx.Module):
  """Token embedding with HF's parameter name: `weight` [V, D]."""

  def __init__(self, vocab_size: int, dim: int, *, param_dtype, dtype, rngs: nnx.Rngs):
    self.weight = param(nnx.initializers.normal(0.02)(rngs.params(), (vocab_size, dim),
                                                      param_dtype), ("vocab", "embed"))
    self.dtype = dtype

  def __call__(self, ids_bt: jax.Array) -> jax.Array:
    """[B, T] int -> [B, T, D]."""
    return jnp.take(self.weight[...], ids_bt, axis=0).astype(self.dtype)
