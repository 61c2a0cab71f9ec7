"""The decoder's forward pass over a static-shape key/value cache (prefill and one decode step).

The cache holds every layer's rotated keys and values for S = prompt + new-token columns,
[L, B, S, K, H] in the activation dtype. Column s of row b is valid once written and when it is
not left padding (`valid_bs`); a query at column c attends to the valid columns s <= c. Rows are
left padded, so every row writes the same column at every step and one `dynamic_update_slice`
serves the whole batch; each row's RoPE positions start at 0 at its first real token, so a padded
row computes what the same prompt alone computes.

The layers reuse the model's own modules (`Attention.project`, `o_proj`, `mlp`, the norms), so
the cached path is the training forward with the attention's keys read from the cache; with
`scan_layers` the layers and the cache's layer axis go through one `lax.scan`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from fedlora_jax.models.config import ModelConfig
from fedlora_jax.models.functional import Params, merge
from fedlora_jax.models.layers import rope_cos_sin, rope_inv_freq
from fedlora_jax.models.transformer import CausalLM, DecoderLayer


class KVCache(NamedTuple):
  """Keys and values [L, B, S, K, H] (rotated keys, as attention uses them)."""
  k: jax.Array
  v: jax.Array


def empty_cache(cfg: ModelConfig, batch: int, columns: int) -> KVCache:
  shape = (cfg.num_hidden_layers, batch, columns, cfg.num_key_value_heads, cfg.head_dim)
  zeros = jnp.zeros(shape, cfg.jnp_dtype)
  return KVCache(zeros, zeros)


def _cached_layer(layer: DecoderLayer, x_btd, cos_bth, sin_bth, k_bskh, v_bskh, allowed_bts,
                  start):
  """One decoder layer on new columns [start, start + T): writes their keys and values to the
  layer's cache [B, S, K, H] and attends over it. Returns (x [B, T, D], k, v)."""
  attn = layer.self_attn
  b, t, _ = x_btd.shape
  q_btnh, k_btkh, v_btkh = attn.project(layer.input_layernorm(x_btd), cos_bth, sin_bth)
  k_bskh = jax.lax.dynamic_update_slice(k_bskh, k_btkh.astype(k_bskh.dtype), (0, start, 0, 0))
  v_bskh = jax.lax.dynamic_update_slice(v_bskh, v_btkh.astype(v_bskh.dtype), (0, start, 0, 0))
  out_btnh = jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=allowed_bts[:, None],
                                          implementation="xla")
  x_btd = x_btd + attn.o_proj(out_btnh.reshape(b, t, attn.num_heads * attn.head_dim))
  x_btd = x_btd + layer.mlp(layer.post_attention_layernorm(x_btd))
  return x_btd, k_bskh, v_bskh


def cached_forward(graphdef: nnx.GraphDef, base: Params, lora: Params, ids_bt: jax.Array,
                   positions_bt: jax.Array, cache: KVCache, valid_bs: jax.Array,
                   start: jax.Array) -> tuple[jax.Array, KVCache]:
  """Runs tokens [B, T] at cache columns [start, start + T) (positions [B, T] for RoPE).

  `valid_bs` [B, S] marks the cache columns that hold real tokens, the new ones included.
  Returns the float32 next-token logits [B, V] of the last new column and the updated cache.
  """
  model: CausalLM = merge(graphdef, base, lora)
  cfg, decoder = model.cfg, model.model
  t, s = ids_bt.shape[1], valid_bs.shape[1]
  cos_bth, sin_bth = rope_cos_sin(positions_bt,
                                  rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))
  x_btd = decoder.embed_tokens(ids_bt).astype(cfg.jnp_dtype)
  causal_ts = jnp.arange(s)[None, :] <= start + jnp.arange(t)[:, None]
  allowed_bts = valid_bs.astype(bool)[:, None, :] & causal_ts[None]
  if cfg.scan_layers == "on":
    layer_def, layer_state = nnx.split(decoder.layers)

    def body(x, xs):
      state, k, v = xs
      x, k, v = _cached_layer(nnx.merge(layer_def, state), x, cos_bth, sin_bth, k, v,
                              allowed_bts, start)
      return x, (k, v)

    x_btd, (k, v) = jax.lax.scan(body, x_btd, (layer_state, cache.k, cache.v))
    cache = KVCache(k, v)
  else:
    ks, vs = [], []
    for i, layer in enumerate(decoder.layers):
      x_btd, k, v = _cached_layer(layer, x_btd, cos_bth, sin_bth, cache.k[i], cache.v[i],
                                  allowed_bts, start)
      ks.append(k)
      vs.append(v)
    cache = KVCache(jnp.stack(ks), jnp.stack(vs))
  return model.logits(decoder.norm(x_btd[:, -1])), cache


def per_row_forward(forward=cached_forward):
  """`forward` with a LoRA tree per row ([B, ...] leaves): vmapped over the batch, the base
  shared (in_axes None), so each row runs its own adapter in one program."""

  def row(graphdef, base, lora, ids_t, positions_t, cache, valid_s, start):
    cache_1 = jax.tree.map(lambda c: c[:, None], cache)  # [L, S, K, H] -> [L, 1, S, K, H]
    logits_1v, cache_1 = forward(graphdef, base, lora, ids_t[None], positions_t[None], cache_1,
                                 valid_s[None], start)
    return logits_1v[0], jax.tree.map(lambda c: c[:, 0], cache_1)

  def batched(graphdef, base, lora, ids_bt, positions_bt, cache, valid_bs, start):
    return jax.vmap(lambda *a: row(graphdef, *a), in_axes=(None, 0, 0, 0, 1, 0, None),
                    out_axes=(0, 1))(base, lora, ids_bt, positions_bt, cache, valid_bs, start)

  return batched
