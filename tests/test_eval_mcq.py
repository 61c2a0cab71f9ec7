"""Option-letter scoring on hand-built logits, and batched evaluation with a fixed shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedlora_jax.eval import accuracy, option_log_probs, predict_options

OPTION_IDS = np.array([3, 5, 7, 9], np.int32)  # " A".." D" in a 12-token vocabulary


def test_predict_options_hand_built():
  logits = np.full((4, 12), -1.0, np.float32)
  logits[0, [3, 5, 7, 9]] = [0.1, 2.0, 0.3, 0.4]   # B
  logits[1, [3, 5, 7, 9]] = [5.0, 1.0, 1.0, 1.0]   # A
  logits[2, [3, 5, 7, 9]] = [0.0, 0.0, 0.0, 0.5]   # D
  logits[2, 0] = 99.0                              # a non-option token never wins
  logits[3, [3, 5, 7, 9]] = [0.0, 0.0, 3.0, 2.9]   # C
  pred = predict_options(jnp.asarray(logits), OPTION_IDS)
  assert pred.tolist() == [1, 0, 3, 2] and pred.dtype == jnp.int32
  assert accuracy(pred, np.array([1, 0, 3, 3])) == 0.75
  assert accuracy(pred, np.array([0, 0, 0, 0])) == 0.25
  lp = option_log_probs(jnp.asarray(logits), OPTION_IDS)
  expected = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)[:, OPTION_IDS]
  np.testing.assert_allclose(lp, expected, rtol=1e-6)
  assert jnp.argmax(lp, axis=-1).tolist() == pred.tolist()
  with pytest.raises(ValueError):
    accuracy(pred, np.array([1, 0]))


def test_predict_options_vmaps_over_clients():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 12)), jnp.float32)  # [C, B, V]
  per_client = jax.vmap(predict_options, in_axes=(0, None))(logits, OPTION_IDS)
  assert per_client.shape == (3, 5)
  for c in range(3):
    assert per_client[c].tolist() == predict_options(logits[c], OPTION_IDS).tolist()


def test_predict_options_masks_padding_options():
  logits = np.zeros((2, 12), np.float32)
  logits[0, [3, 5, 7, 9]] = [0.1, 0.2, 0.3, 9.0]   # D would win, but only A..C are options
  logits[1, [3, 5, 7, 9]] = [0.5, 0.2, 0.1, 0.0]
  valid = np.array([True, True, True, False])
  assert predict_options(jnp.asarray(logits), OPTION_IDS, valid).tolist() == [2, 0]
