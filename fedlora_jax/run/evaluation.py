"""Accuracy of one or many LoRA adapters on every client's test set, in one jitted program."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedlora_jax.data import TokenizedMCQ
from fedlora_jax.eval.mcq import predict_options
from fedlora_jax.models import last_logits


@functools.partial(jax.jit, static_argnums=0)
def _predict_models(graphdef, base, lora_m, ids_bs, mask_bs, pos_b, option_ids):
  """[M] adapters (leading axis) x one batch -> predicted option [M, B]."""
  def one(lora):
    return predict_options(last_logits(graphdef, base, lora, ids_bs, mask_bs, pos_b), option_ids)
  return jax.vmap(one)(lora_m)


def accuracy_matrix(graphdef, base, lora_m, test_sets: list[TokenizedMCQ],
                    batch_size: int) -> np.ndarray:
  """[M, T] accuracy of adapter m on test set t; `lora_m` leaves carry a leading model axis."""
  return np.stack([_accuracies(graphdef, base, lora_m, data, batch_size) for data in test_sets],
                  axis=1)


def correct_matrix(graphdef, base, lora_m, test_sets: list[TokenizedMCQ],
                   batch_size: int) -> list[np.ndarray]:
  """Per test set t, [M, N_t] bool: adapter m answers question n right (paired bootstraps)."""
  return [_correct(graphdef, base, lora_m, data, batch_size) for data in test_sets]


def own_accuracies(graphdef, base, lora_m, test_sets: list[TokenizedMCQ],
                   batch_size: int) -> np.ndarray:
  """[T] accuracy of adapter t on test set t only (M == T personal adapters)."""
  return np.asarray([
      _accuracies(graphdef, base, jax.tree.map(lambda x: x[t:t + 1], lora_m), data,
                  batch_size)[0] for t, data in enumerate(test_sets)])


def _accuracies(graphdef, base, lora_m, data: TokenizedMCQ, batch_size: int) -> np.ndarray:
  """[M] accuracy of each adapter on one test set."""
  return _correct(graphdef, base, lora_m, data, batch_size).mean(axis=1)


def _correct(graphdef, base, lora_m, data: TokenizedMCQ, batch_size: int) -> np.ndarray:
  """[M, N] bool: adapter m's answer to question n is right."""
  n = len(data)
  preds = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    idx[idx >= n] = start  # pad with a real row so every batch has one shape
    preds.append(_predict_models(graphdef, base, lora_m, data.input_ids[idx],
                                 data.attention_mask[idx], data.answer_pos[idx],
                                 jnp.asarray(data.option_token_ids)))
  pred_mn = np.concatenate([np.asarray(p) for p in preds], axis=1)[:, :n]
  return pred_mn == data.labels[None]
