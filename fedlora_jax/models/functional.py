"""Pure functions over (graphdef, base params, LoRA params, batch): what gets jitted and vmapped.

`split_lora` turns a `CausalLM` into a static graphdef plus two plain nested dicts: the frozen base
params and the trainable LoRA params. Every function here rebuilds the module with `nnx.merge`
inside the trace, so it can be `jax.vmap`-ed over a leading client axis of `lora` with the base
shared (`in_axes=None`): the base then exists once in memory, never per client.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from fedlora_jax.models.lora import LoRAParam
from fedlora_jax.models.transformer import CausalLM

Params = dict[str, Any]


def split_lora(model: CausalLM) -> tuple[nnx.GraphDef, Params, Params]:
  """(graphdef, base params, LoRA params); the param trees are pure nested dicts of arrays."""
  graphdef, lora, base = nnx.split(model, LoRAParam, ...)
  return graphdef, base.to_pure_dict(), lora.to_pure_dict()


def merge(graphdef: nnx.GraphDef, base: Params, lora: Params) -> CausalLM:
  return nnx.merge(graphdef, base, lora)


def hidden_states(graphdef, base: Params, lora: Params, input_ids_bt: jax.Array,
                  attention_mask_bt: jax.Array | None = None,
                  dropout_rng: jax.Array | None = None) -> jax.Array:
  """Final hidden states [B, T, D]."""
  return merge(graphdef, base, lora).model(input_ids_bt, attention_mask_bt, None, dropout_rng)


def logits(graphdef, base: Params, lora: Params, input_ids_bt: jax.Array,
           attention_mask_bt: jax.Array | None = None) -> jax.Array:
  """Full float32 logits [B, T, V] (evaluation of short sequences; training uses `lm_loss`)."""
  return merge(graphdef, base, lora)(input_ids_bt, attention_mask_bt)


def last_logits(graphdef, base: Params, lora: Params, input_ids_bt: jax.Array,
                attention_mask_bt: jax.Array, answer_pos_b: jax.Array) -> jax.Array:
  """Next-token logits [B, V] at position answer_pos[b] of each row (the LM head runs on B rows)."""
  model = merge(graphdef, base, lora)
  h_btd = model.model(input_ids_bt, attention_mask_bt)
  h_bd = jnp.take_along_axis(h_btd, answer_pos_b[:, None, None], axis=1)[:, 0]
  return model.logits(h_bd)


def _select_targets(loss_mask_bt: jax.Array, max_targets: int | None):
  """Indices [B, T'] of the positions whose next token is a target, and their weights [B, T']."""
  w_bt = loss_mask_bt[:, 1:].astype(jnp.float32)  # w[b, t]: token t+1 is predicted from t
  t = w_bt.shape[1]
  if max_targets is None or max_targets >= t:
    return jnp.broadcast_to(jnp.arange(t), w_bt.shape), w_bt
  idx_bk = jnp.argsort(-w_bt, axis=1, stable=True)[:, :max_targets]
  return idx_bk, jnp.take_along_axis(w_bt, idx_bk, axis=1)


def _cross_entropy_sum(model: CausalLM, h_nd: jax.Array, targets_n: jax.Array,
                       w_n: jax.Array, chunk: int) -> jax.Array:
  """sum_n w_n * CE(head(h_n), target_n), computing [chunk, V] logits at a time."""
  n = h_nd.shape[0]
  chunk = min(chunk, n)
  pad = (-n) % chunk
  h = jnp.pad(h_nd, ((0, pad), (0, 0))).reshape(-1, chunk, h_nd.shape[-1])
  tg = jnp.pad(targets_n, (0, pad)).reshape(-1, chunk)
  w = jnp.pad(w_n, (0, pad)).reshape(-1, chunk)

  @jax.checkpoint  # keep no [chunk, V] logits alive for the backward pass
  def one(args):
    h_cd, t_c, w_c = args
    logits_cv = model.logits(h_cd)
    lse_c = jax.nn.logsumexp(logits_cv, axis=-1)
    picked_c = jnp.take_along_axis(logits_cv, t_c[:, None], axis=-1)[:, 0]
    return jnp.sum((lse_c - picked_c) * w_c)

  if h.shape[0] == 1:
    return one((h[0], tg[0], w[0]))
  return jnp.sum(jax.lax.map(one, (h, tg, w)))


def lm_loss(graphdef, base: Params, lora: Params, batch: dict[str, jax.Array], *,
            max_target_tokens: int | None = None, logits_chunk: int = 4096,
            dropout_rng: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean next-token cross-entropy over the target tokens of a batch.

  Args:
    batch: `input_ids` [B, S] int, `attention_mask` [B, S], `loss_mask` [B, S] (1 where
      input_ids[b, t] is a target, predicted from position t - 1; prompt tokens are 0).
    max_target_tokens: at most this many targets per row; the LM head then runs on B x this many
      rows instead of B x S (answer-only losses have a handful of targets per row).
    logits_chunk: rows of [rows, V] logits materialised at once.
  Returns:
    (loss, {"loss_sum", "num_tokens"}).
  """
  model = merge(graphdef, base, lora)
  ids_bs = batch["input_ids"]
  h_bsd = model.model(ids_bs, batch["attention_mask"], None, dropout_rng)
  idx_bk, w_bk = _select_targets(batch["loss_mask"], max_target_tokens)
  h_bkd = jnp.take_along_axis(h_bsd, idx_bk[..., None], axis=1)
  tgt_bk = jnp.take_along_axis(ids_bs, idx_bk + 1, axis=1)
  d = h_bkd.shape[-1]
  loss_sum = _cross_entropy_sum(model, h_bkd.reshape(-1, d), tgt_bk.reshape(-1),
                                w_bk.reshape(-1), logits_chunk)
  num_tokens = jnp.sum(w_bk)
  return loss_sum / jnp.maximum(num_tokens, 1.0), {"loss_sum": loss_sum, "num_tokens": num_tokens}
