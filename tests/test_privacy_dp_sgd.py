"""Example-level DP-SGD: per-example clipping equals a per-example loop, padding rows count for
nothing (FedProx included), the noise has std z*C/E[B], removing one record moves the pre-noise
release by at most C for every algorithm, and with no noise and a huge C a DP round is plain SGD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedlora_jax import federated as F
from fedlora_jax.federated.algorithms.base import split_parts
from fedlora_jax.federated.safeguards import Safeguards
from fedlora_jax.privacy import ExampleDP
from tests.fed_fixtures import client_batches, tiny_model

RNG = np.random.default_rng(0)
PARAMS = {"w": jnp.asarray(RNG.normal(size=(3, 2)), jnp.float32),
          "v": jnp.asarray(RNG.normal(size=(2,)), jnp.float32)}
BATCH = {"x": jnp.asarray(RNG.normal(size=(5, 3)) * [[1.0], [10.0], [0.1], [3.0], [1.0]],
                          jnp.float32),
         "loss_mask": jnp.asarray([[1.0], [1.0], [1.0], [1.0], [0.0]])}  # row 4 is padding
TRAINABLE = {"w": True, "v": True}
KEY = np.asarray([7, 11], np.uint32)


def objective(p, b):
  """Mean over real rows of (tanh(x W) . v)^2; the loss is reported as the aux."""
  out = jnp.tanh(b["x"] @ p["w"]) @ p["v"]
  loss = jnp.sum(b["loss_mask"][:, 0] * out ** 2) / jnp.maximum(jnp.sum(b["loss_mask"]), 1.0)
  return loss, loss


def test_clipped_per_example_gradients_equal_a_loop():
  clip, expected_b = 0.5, 4.0
  grads, loss = ExampleDP(0.0, clip, expected_b).grads(objective, PARAMS, BATCH, KEY, TRAINABLE)
  total = jax.tree.map(jnp.zeros_like, PARAMS)
  norms = []
  for i in range(4):  # the real rows
    one = jax.tree.map(lambda x: x[i:i + 1], BATCH)
    g, _ = jax.grad(objective, has_aux=True)(PARAMS, one)
    norm = np.sqrt(sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(g)))
    norms.append(norm)
    total = jax.tree.map(lambda t, x: t + x * min(1.0, clip / norm) if norm else t, total, g)
  assert max(norms) > clip > min(norms)  # some rows are clipped, some are not
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(total)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b) / expected_b, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(loss), float(objective(PARAMS, BATCH)[1]), rtol=1e-6)


def test_padding_rows_contribute_zero_even_with_a_data_independent_term():
  """A term every row's gradient has (FedProx's proximal pull) must not enter through padding:
  a padding row would otherwise add up to C, and removing a record would move the sum by 2C."""
  def with_pull(p, b):
    value, loss = objective(p, b)
    return value + 10.0 * jnp.sum(jnp.square(p["v"] - 1.0)), loss

  dp = ExampleDP(0.0, 0.5, 4.0)
  padded, _ = dp.clipped_sum(with_pull, PARAMS, BATCH, TRAINABLE)
  real_only, _ = dp.clipped_sum(with_pull, PARAMS, jax.tree.map(lambda x: x[:4], BATCH),
                                TRAINABLE)
  for a, b in zip(jax.tree.leaves(padded), jax.tree.leaves(real_only)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_frozen_leaves_get_no_gradient_and_no_noise():
  grads, _ = ExampleDP(1.0, 1.0, 4.0).grads(objective, PARAMS, BATCH, KEY, {"w": True, "v": False})
  np.testing.assert_array_equal(np.asarray(grads["v"]), 0.0)
  assert np.abs(np.asarray(grads["w"])).max() > 0


def test_noise_std_is_z_times_c_over_expected_batch_and_keyed_by_the_secret():
  z, clip, expected_b = 1.3, 0.7, 4.0
  dp = ExampleDP(z, clip, expected_b)
  clean, _ = ExampleDP(0.0, clip, expected_b).grads(objective, PARAMS, BATCH, KEY, TRAINABLE)
  keys = jax.random.key_data(jax.random.split(jax.random.key(2), 4000))
  draws, _ = jax.vmap(lambda k: dp.grads(objective, PARAMS, BATCH, k, TRAINABLE))(keys)
  noise = np.concatenate([np.asarray(d - c[None]).reshape(4000, -1)
                          for d, c in zip(jax.tree.leaves(draws), jax.tree.leaves(clean))], 1)
  np.testing.assert_allclose(noise.std(), z * clip / expected_b, rtol=0.05)
  assert abs(noise.mean()) < 0.05 * z * clip / expected_b
  assert len({row.tobytes() for row in noise[:100]}) == 100  # another key, other noise


ALGORITHMS = ["fedavg", "fedprox", "scaffold", "ffa_lora", "fedsa_lora", "fedex_lora",
              "fedadam"]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_removing_one_record_moves_the_clipped_sum_by_at_most_c(name):
  """Measured, not restated: the engine's own local objective (LM loss + the algorithm's penalty)
  at an adapter away from the round's start; over random batches, one real row turned into
  padding (the record removed) moves the pre-noise release by at most C."""
  graphdef, base, lora = tiny_model()
  alg = F.make_algorithm(name, fedprox_mu=5.0)
  fr = F.FederatedRound(graphdef, alg, F.LocalTraining(local_steps=1), 1)
  start = lora
  moved = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(3), x.shape), lora)
  train, frozen = split_parts(moved, alg.trainable_parts)
  obj = fr.local_objective(base, split_parts(start, alg.trainable_parts)[1], start,
                           jax.random.key(0))
  del frozen
  clip = 0.05
  dp = ExampleDP(0.0, clip, 4.0)
  trainable = jax.tree.map(lambda _: True, train)
  release = jax.jit(lambda b: dp.clipped_sum(obj, train, b, trainable)[0])
  worst = 0.0
  for trial in range(12):
    b = {k: v[0, 0] for k, v in client_batches(1, 1, b=4, seed=trial).items()}
    removed = dict(b, loss_mask=b["loss_mask"].copy())
    removed["loss_mask"][trial % 4] = 0.0
    diff = jax.tree.map(lambda x, y: x - y, release(b), release(removed))
    worst = max(worst, float(np.sqrt(sum(np.sum(np.square(np.asarray(d)))
                                         for d in jax.tree.leaves(diff)))))
  assert worst <= clip * (1 + 1e-5)
  assert worst > 0.5 * clip  # the bound is reached, so the test can see a 2C leak


def test_round_with_no_noise_and_huge_clip_equals_plain_sgd():
  """Each row has the same number of targets, so the batch mean equals the mean of rows."""
  graphdef, base, lora = tiny_model()
  tr = F.LocalTraining(local_steps=2, optimizer="sgd", learning_rate=0.1, grad_clip_norm=None)
  alg = F.make_algorithm("fedavg")
  batches = client_batches(2, 2, b=3, seed=1)
  ids = np.arange(2)
  plain = F.FederatedRound(graphdef, alg, tr, 2).train(F.init_state(alg, lora, 2, 0), base,
                                                       batches, ids)
  dp = Safeguards(example_dp=ExampleDP(0.0, 1e6, 3.0))
  private = F.FederatedRound(graphdef, alg, tr, 2, safeguards=dp).train(
      F.init_state(alg, lora, 2, 0), base, batches, ids, np.zeros((2, 2), np.uint32))
  for a, b in zip(jax.tree.leaves(plain[0]), jax.tree.leaves(private[0])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(plain[2]), np.asarray(private[2]), rtol=1e-5)


def test_a_dp_round_without_secret_keys_is_refused():
  graphdef, base, lora = tiny_model()
  alg = F.make_algorithm("fedavg")
  fr = F.FederatedRound(graphdef, alg, F.LocalTraining(local_steps=1), 2,
                        safeguards=Safeguards(example_dp=ExampleDP(1.0, 1.0, 2.0)))
  with pytest.raises(ValueError, match="secret noise keys"):
    fr.train(F.init_state(alg, lora, 2, 0), base, client_batches(2, 1), np.arange(2))
