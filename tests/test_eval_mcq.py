"""Option-letter scoring on hand-built logits, and batched evaluation with a fixed shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedlora_jax.data import TokenizedMCQ
from fedlora_jax.eval import accuracy, evaluate, option_log_probs, predict, predict_options

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


def _toy_set(n: int = 5, s: int = 6) -> TokenizedMCQ:
  """The token at answer_pos says which option a toy "model" picks: token = 3 + 2 * option."""
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 12, (n, s)).astype(np.int32)
  pos = np.array([1, 2, 3, 4, 2][:n], np.int32)
  picked = np.array([0, 1, 2, 3, 1][:n])
  ids[np.arange(n), pos] = OPTION_IDS[picked]
  labels = np.array([0, 1, 0, 3, 2][:n], np.int32)                 # rows 0, 1, 3 right
  mask = np.ones((n, s), np.int32)
  return TokenizedMCQ(ids, mask, np.zeros((n, s), np.float32), pos, labels, OPTION_IDS)


def test_evaluate_pads_last_batch_and_compiles_once():
  calls = []

  @jax.jit
  def last_logits_fn(params, input_ids, attention_mask, answer_pos):
    calls.append(input_ids.shape)                                  # runs only when tracing
    tok = jnp.take_along_axis(input_ids, answer_pos[:, None], axis=1)[:, 0]
    return params["scale"] * jax.nn.one_hot(tok, 12) * attention_mask[:, :1]

  data = _toy_set()
  params = {"scale": jnp.float32(2.0)}
  assert predict(last_logits_fn, params, data, batch_size=2).tolist() == [0, 1, 2, 3, 1]
  assert evaluate(last_logits_fn, params, data, batch_size=2) == pytest.approx(3 / 5)
  assert evaluate(last_logits_fn, params, data, batch_size=8) == pytest.approx(3 / 5)
  assert calls == [(2, 6), (8, 6)]           # one trace per batch size, last batch padded
