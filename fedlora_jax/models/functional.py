"""Pure functions over (graphdef, base params, LoRA params, batch): what gets jitted and vmapped.

`split_lora` turns a `CausalLM` into a static graphdef plus two plain nested dicts: the frozen base
params and the trainable LoRA params. Every function here rebuilds the module with `nnx.merge`
inside the trace, so it can be `jax.vmap`-ed over a leading client axis of `lora` with the base
shared (`in_axes=None`): the base then exists once in memory, never per client.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from jax.custom_derivatives import SymbolicZero

from fedlora_jax.models import quant
from fedlora_jax.models.lora import LoRAParam
from fedlora_jax.models.transformer import CausalLM

Params = dict[str, Any]


def split_lora(model: CausalLM) -> tuple[nnx.GraphDef, Params, Params]:
  """(graphdef, base params, LoRA params); the param trees are pure nested dicts of arrays, both
  with stacked layers when the model scans them (`models.layer_stack`)."""
  graphdef, lora, base = nnx.split(model, LoRAParam, ...)
  return graphdef, base.to_pure_dict(), lora.to_pure_dict()


def base_logical_axes(graphdef: nnx.GraphDef) -> Params:
  """The base params' logical axis names (see `models.partitioning`): a nested dict shaped like
  the base from `split_lora`, each leaf a tuple of names, one per axis (() when undeclared); a
  quantized weight's entry is a `QuantizedWeight` of such tuples (`quant.logical_axes`)."""
  skeleton = nnx.merge(graphdef, [None] * graphdef.num_leaves)  # metadata only, no arrays

  def axes(var) -> Any:
    names = tuple(var.get_metadata().get("out_sharding") or ())
    quantized = var.get_metadata().get("quantized")
    return names if quantized is None else quant.logical_axes(*quantized, names)

  _, _, base = nnx.split(skeleton, LoRAParam, ...)
  return traverse_util.unflatten_dict({path: axes(var) for path, var in nnx.to_flat_state(base)})


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


def _chunked(x: jax.Array, chunk: int) -> jax.Array:
  """[N, ...] -> [N / chunk, chunk, ...], zero-padded at the end."""
  pad = (-x.shape[0]) % chunk
  x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
  return x.reshape((-1, chunk) + x.shape[1:])


def _ce_chunk(h_cd, w_vd, t_c, dtype):
  """Logits [c, V] (float32) of one chunk, and its per-row log-sum-exp and target logit."""
  logits_cv = jnp.einsum("cd,vd->cv", h_cd.astype(dtype), w_vd.astype(dtype),
                         preferred_element_type=jnp.float32)
  lse_c = jax.nn.logsumexp(logits_cv, axis=-1)
  picked_c = jnp.take_along_axis(logits_cv, t_c[:, None], axis=-1)[:, 0]
  return logits_cv, lse_c, picked_c


def _ce_sum_primal(h_nd, w_vd, targets_n, w_n, chunk, dtype):
  def one(xs):
    h_cd, t_c, wt_c = xs
    _, lse_c, picked_c = _ce_chunk(h_cd, w_vd, t_c, dtype)
    return jnp.sum((lse_c - picked_c) * wt_c)
  xs = (_chunked(h_nd, chunk), _chunked(targets_n, chunk), _chunked(w_n, chunk))
  return jnp.sum(jax.lax.map(one, xs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _fused_cross_entropy_sum(h_nd, w_vd, targets_n, w_n, chunk, dtype):
  return _ce_sum_primal(h_nd, w_vd, targets_n, w_n, chunk, dtype)


def _fused_ce_fwd(h_nd, w_vd, targets_n, w_n, chunk, dtype):
  """Forward that also forms d(loss_sum)/dh chunk by chunk: softmax - onehot never outlives its
  [chunk, V] block, and the head matmul is never recomputed in the backward pass."""
  need_dw = w_vd.perturbed
  h_nd, w_vd, targets_n, w_n = h_nd.value, w_vd.value, targets_n.value, w_n.value
  n, d = h_nd.shape

  def one(dw_vd, xs):
    h_cd, t_c, wt_c = xs
    logits_cv, lse_c, picked_c = _ce_chunk(h_cd, w_vd, t_c, dtype)
    ce_c = lse_c - picked_c
    g_cv = jnp.exp(logits_cv - lse_c[:, None])
    g_cv = (g_cv - jax.nn.one_hot(t_c, g_cv.shape[-1], dtype=g_cv.dtype)) * wt_c[:, None]
    g_cv = g_cv.astype(dtype)
    dh_cd = jnp.einsum("cv,vd->cd", g_cv, w_vd.astype(dtype),
                       preferred_element_type=jnp.float32).astype(h_nd.dtype)
    if need_dw:
      dw_vd = dw_vd + jnp.einsum("cv,cd->vd", g_cv, h_cd.astype(dtype),
                                 preferred_element_type=jnp.float32)
    return dw_vd, (jnp.sum(ce_c * wt_c), ce_c, dh_cd)

  dw0 = jnp.zeros(w_vd.shape, jnp.float32) if need_dw else None
  dw_vd, (loss_k, ce_kc, dh_kcd) = jax.lax.scan(
      one, dw0, (_chunked(h_nd, chunk), _chunked(targets_n, chunk), _chunked(w_n, chunk)))
  res = (dh_kcd.reshape(-1, d)[:n], ce_kc.reshape(-1)[:n],
         None if dw_vd is None else dw_vd.astype(w_vd.dtype), targets_n)
  return jnp.sum(loss_k), res


def _fused_ce_bwd(chunk, dtype, res, ct):
  del chunk, dtype
  dh_nd, ce_n, dw_vd, targets_n = res
  if isinstance(ct, SymbolicZero):
    ct = jnp.zeros((), jnp.float32)
  d_targets = np.zeros(targets_n.shape, jax.dtypes.float0)
  return ((ct * dh_nd).astype(dh_nd.dtype), None if dw_vd is None else ct * dw_vd, d_targets,
          ct * ce_n)


_fused_cross_entropy_sum.defvjp(_fused_ce_fwd, _fused_ce_bwd, symbolic_zeros=True)


def _cross_entropy_sum(model: CausalLM, h_nd: jax.Array, targets_n: jax.Array,
                       w_n: jax.Array, chunk: int) -> jax.Array:
  """sum_n w_n * CE(head(h_n), target_n), computing [chunk, V] logits at a time.

  The backward pass never recomputes or stores logits: the forward pass forms the gradient with
  respect to h for each chunk (see `_fused_ce_fwd`).
  """
  chunk = min(chunk, h_nd.shape[0])
  return _fused_cross_entropy_sum(h_nd, model.head_weight(), targets_n, w_n.astype(jnp.float32),
                                  chunk, model.cfg.jnp_dtype)


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
