"""Multiple-choice scoring by the log-likelihood of each option letter.

The model gives the next-token logits at each example's last prompt token (`answer_pos`); the
prediction is the option whose answer token (" A", " B", ...) has the largest logit there, which is
the option of largest log-likelihood (log-softmax is monotone). `evaluate` runs fixed-shape batches
(the last one padded by repeating its first row), so the caller's jitted model compiles once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedlora_jax.data.tokenization import TokenizedMCQ

LastLogitsFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


def option_log_probs(last_logits: jax.Array, option_token_ids: jax.Array) -> jax.Array:
  """[B, V] logits -> [B, O] log-probabilities of the option tokens (over the full vocabulary)."""
  log_probs_bv = jax.nn.log_softmax(last_logits.astype(jnp.float32), axis=-1)
  return jnp.take(log_probs_bv, jnp.asarray(option_token_ids), axis=-1)


def predict_options(last_logits: jax.Array, option_token_ids: jax.Array) -> jax.Array:
  """[B, V] logits, [O] option token ids -> [B] int32 index of the most likely option."""
  option_logits_bo = jnp.take(last_logits, jnp.asarray(option_token_ids), axis=-1)
  return jnp.argmax(option_logits_bo, axis=-1).astype(jnp.int32)


def accuracy(pred: np.ndarray | jax.Array, labels: np.ndarray | jax.Array) -> float:
  """Fraction of pred [N] equal to labels [N]."""
  pred, labels = np.asarray(pred), np.asarray(labels)
  if pred.shape != labels.shape or pred.size == 0:
    raise ValueError(f"pred {pred.shape} and labels {labels.shape} must be equal and non-empty")
  return float(np.mean(pred == labels))


_predict_jit = jax.jit(predict_options)


def predict(last_logits_fn: LastLogitsFn, params: Any, data: TokenizedMCQ,
            batch_size: int) -> np.ndarray:
  """[N] int32 predicted option per example; every batch is [batch_size, S]."""
  n = len(data)
  preds = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    idx[idx >= n] = start                                    # pad with a real row
    logits_bv = last_logits_fn(params, data.input_ids[idx], data.attention_mask[idx],
                               data.answer_pos[idx])
    preds.append(_predict_jit(logits_bv, data.option_token_ids))
  return np.concatenate([np.asarray(p) for p in preds])[:n]


def evaluate(last_logits_fn: LastLogitsFn, params: Any, data: TokenizedMCQ,
             batch_size: int) -> float:
  """Accuracy of the model `last_logits_fn(params, ...)` on `data`."""
  return accuracy(predict(last_logits_fn, params, data, batch_size), data.labels)
