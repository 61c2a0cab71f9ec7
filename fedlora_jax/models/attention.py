"""Grouped-query self-attention with Qwen3's per-head q/k RMSNorm and HF-layout RoPE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from fedlora_jax.models.config import ModelConfig
from fedlora_jax.models.layers import RMSNorm, apply_rope
from fedlora_jax.models.lora import Linear, projections


def _split(rng: jax.Array | None, n: int) -> list[jax.Array | None]:
  return [None] * n if rng is None else list(jax.random.split(rng, n))


class Attention(nnx.Module):
  """Causal GQA attention: N query heads share K = N / G key/value heads."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, h = cfg.hidden_size, cfg.head_dim
    n, k = cfg.num_attention_heads, cfg.num_key_value_heads
    kw = dict(param_dtype=cfg.jnp_param_dtype, dtype=cfg.jnp_dtype, rngs=rngs,
              quant=cfg.quant_format)
    bias = cfg.attention_bias
    self.q_proj = Linear(d, n * h, axes=("heads", "embed"), use_bias=bias, **kw)
    self.k_proj = Linear(d, k * h, axes=("kv_heads", "embed"), use_bias=bias, **kw)
    self.v_proj = Linear(d, k * h, axes=("kv_heads", "embed"), use_bias=bias, **kw)
    self.o_proj = Linear(n * h, d, axes=("embed", "heads"), use_bias=bias, **kw)
    if cfg.qk_norm:
      norm = dict(param_dtype=cfg.jnp_param_dtype, axes=("head_dim",))
      self.q_norm = nnx.data(RMSNorm(h, cfg.rms_norm_eps, **norm))
      self.k_norm = nnx.data(RMSNorm(h, cfg.rms_norm_eps, **norm))
    else:
      self.q_norm = nnx.data(None)
      self.k_norm = nnx.data(None)
    self.num_heads, self.num_kv_heads, self.head_dim = n, k, h
    self.implementation = cfg.attention_impl  # resolved: "xla" or "cudnn"
    self.fuse_lora = cfg.fuse_lora == "on"

  def __call__(self, x_btd: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array,
               mask_bs: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
    """x: [B, T, D]; cos/sin: [B, T, H]; mask: [B, T] (1 for real tokens). Returns [B, T, D]."""
    b, t, _ = x_btd.shape
    rq, rk, rv, ro = _split(dropout_rng, 4)
    q_btnh, k_btkh, v_btkh = self.project(x_btd, cos_bth, sin_bth, [rq, rk, rv])
    out_btnh = attend(q_btnh, k_btkh, v_btkh, mask_bs, self.implementation,
                      by_lengths=self.implementation == "cudnn")
    out_btnh = checkpoint_name(out_btnh, "attention_out")
    return self.o_proj(out_btnh.reshape(b, t, self.num_heads * self.head_dim), ro)

  def project(self, x_btd: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array,
              rngs: list[jax.Array | None] | None = None
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Rotated queries [B, T, N, H], rotated keys and values [B, T, K, H] of x [B, T, D]."""
    b, t, _ = x_btd.shape
    q_btf, k_btf, v_btf = projections([self.q_proj, self.k_proj, self.v_proj], x_btd,
                                      rngs or [None] * 3, fuse=self.fuse_lora)
    q_btnh = q_btf.reshape(b, t, self.num_heads, self.head_dim)
    k_btkh = k_btf.reshape(b, t, self.num_kv_heads, self.head_dim)
    v_btkh = v_btf.reshape(b, t, self.num_kv_heads, self.head_dim)
    if self.q_norm is not None:
      q_btnh = self.q_norm(q_btnh)
      k_btkh = self.k_norm(k_btkh)
    q_btnh = checkpoint_name(apply_rope(q_btnh, cos_bth, sin_bth), "qkv")
    k_btkh = checkpoint_name(apply_rope(k_btkh, cos_bth, sin_bth), "qkv")
    v_btkh = checkpoint_name(v_btkh, "qkv")
    return q_btnh, k_btkh, v_btkh


def attend(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array, mask_bs: jax.Array,
           implementation: str, *, by_lengths: bool) -> jax.Array:
  """Causal GQA attention over right-padded keys, [B, T, N, H] -> [B, T, N, H].

  `jax.nn.dot_product_attention` handles GQA (N a multiple of K) without repeating k/v. With
  `by_lengths` the padding goes in as key lengths [B] (what cuDNN's fused kernel takes; it equals
  the mask only for right padding, the batches' layout); otherwise as a [B, 1, 1, S] key mask.
  """
  if by_lengths:
    # An all-padding row (zero loss) keeps one key, so no row is empty (no NaN in a kernel).
    lengths_b = jnp.maximum(jnp.sum(mask_bs, axis=-1, dtype=jnp.int32), 1)
    return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, is_causal=True,
                                        key_value_seq_lengths=lengths_b,
                                        implementation=implementation)
  key_mask_b11s = mask_bs.astype(bool)[:, None, None, :]
  return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=key_mask_b11s, is_causal=True,
                                      implementation=implementation)
