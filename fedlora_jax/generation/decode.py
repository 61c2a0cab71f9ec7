"""Batched autoregressive decoding: one jitted prefill, then a `lax.while_loop` of decode steps.

    graphdef, base, lora = models.split_lora(model)
    ids_bp, mask_bp = left_pad([[5, 6, 7], [8, 9]], pad_id=0)
    out = generate(graphdef, base, lora, ids_bp, mask_bp, DecodeConfig(max_new_tokens=32))

LoRA runs unmerged (`merge_adapter` folds one adapter into the base instead; the tokens are the
same). Many adapters in one call: `lora` with a leading adapter axis [A, ...] and `adapter_ids`
[B] choosing each row's adapter; the rows' adapters are gathered ([B, ...]) and the forward is
vmapped over rows with the base shared, as the training engine does over its client axis, so
every hospital's personal adapter and the global one decode together over one copy of the base.

Sharding: the program follows the shardings of the arrays it is given (a base placed over a
mesh's `model` axis stays there); the cache gets no explicit sharding constraint yet.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fedlora_jax.generation.kv_cache import cached_forward, empty_cache, per_row_forward
from fedlora_jax.generation.sampling import DecodeConfig, next_token
from fedlora_jax.models.functional import Params, merge, split_lora
from fedlora_jax.models.lora import merge_lora

# Called (from inside the loop, on the host) with each step's tokens [B] and whether each row had
# already stopped before it [B].
TokenCallback = Callable[[np.ndarray, np.ndarray], None]


class Generated(NamedTuple):
  """tokens [B, N] (pad_id after a row's stop token), lengths [B] (tokens up to and including
  the stop token), logits [B, N, V] float32 when asked for (else None)."""
  tokens: jax.Array
  lengths: jax.Array
  logits: jax.Array | None


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, multiple: int = 1
             ) -> tuple[np.ndarray, np.ndarray]:
  """Token lists -> left-padded ids [B, P] int32 and mask [B, P] (1 for real tokens); P is the
  longest prompt rounded up to `multiple` (fewer distinct shapes, fewer compilations)."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  width = -(-max(len(p) for p in prompts) // multiple) * multiple
  ids = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    ids[i, width - len(p):] = p
    mask[i, width - len(p):] = 1
  return ids, mask


def merge_adapter(graphdef: nnx.GraphDef, base: Params, lora: Params
                  ) -> tuple[nnx.GraphDef, Params, Params]:
  """(graphdef, base with scaling * B A folded into each adapted weight, empty LoRA)."""
  model = merge(graphdef, base, lora)
  merge_lora(model)
  return split_lora(model)


def generate(graphdef: nnx.GraphDef, base: Params, lora: Params, ids_bp, mask_bp,
             config: DecodeConfig, *, rng: jax.Array | None = None,
             adapter_ids: jax.Array | None = None, keep_logits: bool = False,
             on_tokens: TokenCallback | None = None) -> Generated:
  """Decodes `config.max_new_tokens` tokens after each left-padded prompt.

  Args:
    ids_bp, mask_bp: left-padded prompts [B, P] and their mask (see `left_pad`); the last
      column must be a real token of every row.
    rng: the sampling key (required unless greedy).
    adapter_ids: [B] int, each row's adapter; `lora` then has a leading adapter axis [A, ...].
    keep_logits: also return every step's logits [B, N, V].
    on_tokens: streams each step's tokens to the host (see `TokenCallback`).
  """
  if not config.greedy and rng is None:
    raise ValueError("sampling (temperature > 0) needs an rng key")
  if not np.all(np.asarray(mask_bp)[:, -1]):
    raise ValueError("prompts must be left padded: the last column of mask_bp must be all ones")
  return _generate(graphdef, config, keep_logits, on_tokens, base, lora,
                   jnp.asarray(ids_bp, jnp.int32), jnp.asarray(mask_bp, jnp.int32),
                   jax.random.key(0) if rng is None else rng,
                   None if adapter_ids is None else jnp.asarray(adapter_ids, jnp.int32))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _generate(graphdef, config: DecodeConfig, keep_logits: bool, on_tokens, base, lora, ids_bp,
              mask_bp, rng, adapter_ids):
  cfg = merge(graphdef, base, jax.tree.map(lambda x: x[0], lora) if adapter_ids is not None
              else lora).cfg
  b, p = ids_bp.shape
  n = config.max_new_tokens
  forward = cached_forward
  if adapter_ids is not None:
    lora = jax.tree.map(lambda x: x[adapter_ids], lora)  # [A, ...] -> each row's [B, ...]
    forward = per_row_forward(cached_forward)
  forward = functools.partial(forward, graphdef, base, lora)
  positions_bp = jnp.maximum(jnp.cumsum(mask_bp, axis=1) - 1, 0)
  valid_bs = jnp.zeros((b, p + n), bool).at[:, :p].set(mask_bp.astype(bool))
  logits_bv, cache = forward(ids_bp, positions_bp, empty_cache(cfg, b, p + n), valid_bs, 0)
  stop_ids = jnp.asarray(config.stop_ids or (-1,), jnp.int32)
  v = logits_bv.shape[-1]

  def step(state):
    i, logits_bv, cache, valid_bs, position_b, tokens_bn, all_logits, done_b = state
    token_b = next_token(logits_bv, config, jax.random.fold_in(rng, i))
    token_b = jnp.where(done_b, config.pad_id, token_b)
    if on_tokens is not None:
      jax.debug.callback(on_tokens, token_b, done_b, ordered=True)
    tokens_bn = jax.lax.dynamic_update_slice(tokens_bn, token_b[:, None], (0, i))
    if keep_logits:
      all_logits = jax.lax.dynamic_update_slice(all_logits, logits_bv[:, None], (0, i, 0))
    done_b = done_b | jnp.isin(token_b, stop_ids)
    valid_bs = jax.lax.dynamic_update_slice(valid_bs, jnp.ones((b, 1), bool), (0, p + i))
    logits_bv, cache = forward(token_b[:, None], position_b[:, None], cache, valid_bs, p + i)
    return i + 1, logits_bv, cache, valid_bs, position_b + 1, tokens_bn, all_logits, done_b

  def running(state):
    return (state[0] < n) & ~jnp.all(state[-1])

  state = (jnp.int32(0), logits_bv, cache, valid_bs, positions_bp[:, -1] + 1,
           jnp.full((b, n), config.pad_id, jnp.int32),
           jnp.zeros((b, n, v) if keep_logits else (), jnp.float32), jnp.zeros((b,), bool))
  _, _, _, _, _, tokens_bn, all_logits, _ = jax.lax.while_loop(running, step, state)
  stopped_bn = jnp.isin(tokens_bn, stop_ids) if config.stop_ids else jnp.zeros((b, n), bool)
  lengths_b = jnp.where(jnp.any(stopped_bn, axis=1), jnp.argmax(stopped_bn, axis=1) + 1, n)
  return Generated(tokens_bn, lengths_b.astype(jnp.int32), all_logits if keep_logits else None)
