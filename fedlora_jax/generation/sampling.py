"""Choosing the next token: greedy, or sampling with temperature, top-k and top-p.

The filters follow Hugging Face's logits warpers (temperature, then top-k, then top-p), so a
sampling setting means the same here as in `transformers`' `generate`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How to decode.

  Attributes:
    max_new_tokens: tokens generated per row at most (the cache has prompt + this many columns).
    temperature: 0 for greedy decoding; > 0 samples from softmax(logits / temperature).
    top_k: sample among the k most likely tokens only; 0: all.
    top_p: sample from the smallest set of most likely tokens whose probability reaches top_p;
      1.0: all.
    stop_ids: a row stops after generating any of these (the stop token is kept).
    pad_id: what a stopped row emits for the rest of the steps.
  """

  max_new_tokens: int = 64
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


def filter_logits(logits_bv: jax.Array, config: DecodeConfig) -> jax.Array:
  """Temperature-scaled logits [B, V] with the tokens top-k / top-p exclude set to -inf."""
  logits_bv = logits_bv.astype(jnp.float32) / config.temperature
  if 0 < config.top_k < logits_bv.shape[-1]:
    kth_b1 = jax.lax.top_k(logits_bv, config.top_k)[0][:, -1:]
    logits_bv = jnp.where(logits_bv < kth_b1, -jnp.inf, logits_bv)
  if config.top_p < 1.0:
    sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]  # descending
    probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
    mass_before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
    # The smallest kept logit: the last one whose preceding mass is still below top_p.
    kept = jnp.sum(mass_before_bv < config.top_p, axis=-1, keepdims=True)  # >= 1
    cutoff_b1 = jnp.take_along_axis(sorted_bv, kept - 1, axis=-1)
    logits_bv = jnp.where(logits_bv < cutoff_b1, -jnp.inf, logits_bv)
  return logits_bv


def next_token(logits_bv: jax.Array, config: DecodeConfig, key: jax.Array | None) -> jax.Array:
  """The chosen token of each row, [B] int32."""
  if config.greedy:
    return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filter_logits(logits_bv, config), axis=-1).astype(jnp.int32)
