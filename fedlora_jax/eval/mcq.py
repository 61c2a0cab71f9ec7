"""Multiple-choice scoring by the log-likelihood of each option's answer token.

The model gives the next-token logits at each example's last prompt token (`answer_pos`); the
prediction is the option whose answer token (" A", " B", ..., or the option's own one-token text)
has the largest logit there, which is the option of largest log-likelihood (log-softmax is
monotone). `run/evaluation.py` batches test
sets over the mesh and calls `predict_options`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np



def option_log_probs(last_logits: jax.Array, option_token_ids: jax.Array) -> jax.Array:
  """[B, V] logits, [B, O] option token ids -> [B, O] log-probabilities of the option tokens (over
  the full vocabulary)."""
  log_probs_bv = jax.nn.log_softmax(last_logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs_bv, jnp.asarray(option_token_ids), axis=-1)


def predict_options(last_logits: jax.Array, option_token_ids: jax.Array,
                    option_valid: jax.Array | None = None) -> jax.Array:
  """[B, V] logits, [B, O] option token ids -> [B] int32 index of the most likely option.

  `option_valid` [O] (or [B, O]) bool masks out padding options (test sets with fewer options
  batched with others).
  """
  option_logits_bo = jnp.take_along_axis(last_logits, jnp.asarray(option_token_ids), axis=-1)
  if option_valid is not None:
    option_logits_bo = jnp.where(option_valid, option_logits_bo.astype(jnp.float32), -jnp.inf)
  return jnp.argmax(option_logits_bo, axis=-1).astype(jnp.int32)


def accuracy(pred: np.ndarray | jax.Array, labels: np.ndarray | jax.Array) -> float:
  """Fraction of pred [N] equal to labels [N]."""
  pred, labels = np.asarray(pred), np.asarray(labels)
  if pred.shape != labels.shape or pred.size == 0:
    raise ValueError(f"pred {pred.shape} and labels {labels.shape} must be equal and non-empty")
  return float(np.mean(pred == labels))
