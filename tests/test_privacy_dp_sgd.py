"""Example-level DP-SGD: per-example clipping equals a per-example loop, padding rows count for
nothing, the noise has std z*C/E[B], and with no noise and a huge C a DP round is plain SGD."""

import jax
import jax.numpy as jnp
import numpy as np

from fedlora_jax import federated as F
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


def objective(p, b):
  """Mean over real rows of (tanh(x W) . v)^2; the loss is reported as the aux."""
  out = jnp.tanh(b["x"] @ p["w"]) @ p["v"]
  loss = jnp.sum(b["loss_mask"][:, 0] * out ** 2) / jnp.maximum(jnp.sum(b["loss_mask"]), 1.0)
  return loss, loss


def test_clipped_per_example_gradients_equal_a_loop():
  clip, expected_b = 0.5, 4.0
  grads, loss = ExampleDP(0.0, clip, expected_b).grads(objective, PARAMS, BATCH, jax.random.key(0),
                                                       TRAINABLE)
  total = jax.tree.map(jnp.zeros_like, PARAMS)
  norms = []
  for i in range(5):
    one = jax.tree.map(lambda x: x[i:i + 1], BATCH)
    g, _ = jax.grad(objective, has_aux=True)(PARAMS, one)
    norm = np.sqrt(sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(g)))
    norms.append(norm)
    total = jax.tree.map(lambda t, x: t + x * min(1.0, clip / norm) if norm else t, total, g)
  assert max(norms[:4]) > clip > min(norms[:4])  # some rows are clipped, some are not
  assert norms[4] == 0.0  # padding has zero gradient
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(total)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b) / expected_b, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(loss), float(objective(PARAMS, BATCH)[1]), rtol=1e-6)


def test_frozen_leaves_get_no_gradient_and_no_noise():
  grads, _ = ExampleDP(1.0, 1.0, 4.0).grads(objective, PARAMS, BATCH, jax.random.key(1),
                                            {"w": True, "v": False})
  np.testing.assert_array_equal(np.asarray(grads["v"]), 0.0)
  assert np.abs(np.asarray(grads["w"])).max() > 0


def test_noise_std_is_z_times_c_over_expected_batch():
  z, clip, expected_b = 1.3, 0.7, 4.0
  dp = ExampleDP(z, clip, expected_b)
  clean, _ = ExampleDP(0.0, clip, expected_b).grads(objective, PARAMS, BATCH, jax.random.key(0),
                                                    TRAINABLE)
  draws, _ = jax.vmap(lambda k: dp.grads(objective, PARAMS, BATCH, k, TRAINABLE))(
      jax.random.split(jax.random.key(2), 4000))
  noise = np.concatenate([np.asarray(d - c[None]).reshape(4000, -1)
                          for d, c in zip(jax.tree.leaves(draws), jax.tree.leaves(clean))], 1)
  np.testing.assert_allclose(noise.std(), z * clip / expected_b, rtol=0.05)
  assert abs(noise.mean()) < 0.05 * z * clip / expected_b


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
      F.init_state(alg, lora, 2, 0), base, batches, ids)
  for a, b in zip(jax.tree.leaves(plain[0]), jax.tree.leaves(private[0])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(plain[2]), np.asarray(private[2]), rtol=1e-5)
