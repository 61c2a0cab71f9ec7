"""Option scoring on hand-built logits (each row its own option tokens), and batched evaluation
with a fixed shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedlora_jax.eval import accuracy, option_log_probs, predict_options

OPTION_IDS = np.array([3, 5, 7, 9], np.int32)  # " A".." D" in a 12-token vocabulary


def _rows(ids: np.ndarray, n: int) -> np.ndarray:
  """[n, O]: the same option ids on every row."""
  return np.tile(ids, (n, 1))


def test_predict_options_hand_built():
  logits = np.full((4, 12), -1.0, np.float32)
  logits[0, [3, 5, 7, 9]] = [0.1, 2.0, 0.3, 0.4]   # B
  logits[1, [3, 5, 7, 9]] = [5.0, 1.0, 1.0, 1.0]   # A
  logits[2, [3, 5, 7, 9]] = [0.0, 0.0, 0.0, 0.5]   # D
  logits[2, 0] = 99.0                              # a non-option token never wins
  logits[3, [3, 5, 7, 9]] = [0.0, 0.0, 3.0, 2.9]   # C
  pred = predict_options(jnp.asarray(logits), _rows(OPTION_IDS, 4))
  assert pred.tolist() == [1, 0, 3, 2] and pred.dtype == jnp.int32
  assert accuracy(pred, np.array([1, 0, 3, 3])) == 0.75
  assert accuracy(pred, np.array([0, 0, 0, 0])) == 0.25
  lp = option_log_probs(jnp.asarray(logits), _rows(OPTION_IDS, 4))
  expected = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)[:, OPTION_IDS]
  np.testing.assert_allclose(lp, expected, rtol=1e-6)
  assert jnp.argmax(lp, axis=-1).tolist() == pred.tolist()
  with pytest.raises(ValueError):
    accuracy(pred, np.array([1, 0]))


def test_predict_options_vmaps_over_clients():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 12)), jnp.float32)  # [C, B, V]
  ids = _rows(OPTION_IDS, 5)
  per_client = jax.vmap(predict_options, in_axes=(0, None))(logits, ids)
  assert per_client.shape == (3, 5)
  for c in range(3):
    assert per_client[c].tolist() == predict_options(logits[c], ids).tolist()
    assert per_client[c].tolist() == np.argmax(np.asarray(logits[c])[:, OPTION_IDS], -1).tolist()


def test_each_row_scores_its_own_option_tokens():
  """Option-style records: every row has its own candidate tokens (its options' one-token texts)."""
  logits = np.zeros((3, 12), np.float32)
  logits[:, :] = np.arange(12)                    # token 11 most likely, then 10, ...
  ids = np.array([[0, 1, 2, 3], [4, 11, 6, 7], [10, 9, 8, 2]], np.int32)
  assert predict_options(jnp.asarray(logits), ids).tolist() == [3, 1, 0]
  lp = option_log_probs(jnp.asarray(logits), ids)
  full = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
  np.testing.assert_allclose(lp, np.take_along_axis(full, ids, axis=-1), rtol=1e-6)


def test_predict_options_masks_padding_options():
  logits = np.zeros((2, 12), np.float32)
  logits[0, [3, 5, 7, 9]] = [0.1, 0.2, 0.3, 9.0]   # D would win, but only A..C are options
  logits[1, [3, 5, 7, 9]] = [0.5, 0.2, 0.1, 0.0]
  valid = _rows(np.array([True, True, True, False]), 2)
  assert predict_options(jnp.asarray(logits), _rows(OPTION_IDS, 2), valid).tolist() == [2, 0]
