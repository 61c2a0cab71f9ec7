"""Local training of one client on the tiny model: FFA-LoRA differentiates and clips B only,
SCAFFOLD's control variate is the mean of the applied gradients under clipping, FedSA-LoRA falls
back to the global B for a hospital that never trained."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedlora_jax import federated as F
from fedlora_jax.models import lm_loss
from tests.fed_fixtures import client_batches, tiny_model


@pytest.fixture(scope="module")
def tiny():
  return tiny_model()


def _one_client(k, seed=0):
  return {key: v[0] for key, v in client_batches(1, k, seed=seed).items()}


def _loss_grad(graphdef, base, lora, batch):
  return jax.grad(lambda l: lm_loss(graphdef, base, l, batch)[0])(lora)


def _parts(tree, part):
  return [x for p, x in jax.tree_util.tree_leaves_with_path(tree) if p[-1].key == part]


def test_ffa_lora_keeps_a_bit_identical_and_takes_a_b_only_clipped_step(tiny):
  graphdef, base, lora = tiny
  clip, lr = 1e-3, 0.5
  alg = F.make_algorithm("ffa_lora")
  tr = F.LocalTraining(local_steps=1, optimizer="sgd", learning_rate=lr, grad_clip_norm=clip)
  fr = F.FederatedRound(graphdef, alg, tr, num_clients=1)
  batches = _one_client(1)
  local, _, _ = jax.jit(fr.client_train)(base, lora, alg.init_server_state(lora), {}, batches,
                                         jax.random.key(0))
  for a_new, a_old in zip(_parts(local, "lora_A"), _parts(lora, "lora_A")):
    np.testing.assert_array_equal(np.asarray(a_new), np.asarray(a_old))
  grads = _loss_grad(graphdef, base, lora, {k: v[0] for k, v in batches.items()})
  g_b = _parts(grads, "lora_B")
  norm_b = float(np.sqrt(sum(np.sum(np.square(np.asarray(g))) for g in g_b)))
  norm_all = float(np.sqrt(sum(np.sum(np.square(np.asarray(g))) for g in jax.tree.leaves(grads))))
  assert norm_b > clip and norm_all > 1.01 * norm_b  # clipping is active, and A's share matters
  for b_new, b_old, g in zip(_parts(local, "lora_B"), _parts(lora, "lora_B"), g_b):
    np.testing.assert_allclose(np.asarray(b_new), np.asarray(b_old - lr * clip / norm_b * g),
                               rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_scaffold_control_variate_is_the_mean_of_the_applied_gradients(tiny, optimizer):
  graphdef, base, lora = tiny
  k, lr, clip = 3, 0.3, 1e-3
  alg = F.make_algorithm("scaffold")
  tr = F.LocalTraining(local_steps=k, optimizer=optimizer, learning_rate=lr, grad_clip_norm=clip)
  fr = F.FederatedRound(graphdef, alg, tr, num_clients=2)
  c = jax.tree.map(lambda x: 1e-4 * jnp.ones_like(x), lora)
  c_i = jax.tree.map(lambda x: -2e-4 * jnp.ones_like(x), lora)
  server_state = {**alg.init_server_state(lora), "c": c}
  batches = _one_client(k, seed=4)
  local, new_state, _ = jax.jit(fr.client_train)(base, lora, server_state, {"c": c_i}, batches,
                                                 jax.random.key(0))
  # Reference loop: clip the gradient, correct it by c - c_i, step; c_i+ = mean of the clipped.
  opt = optax.sgd(lr) if optimizer == "sgd" else optax.adam(lr)
  y, opt_state, applied = lora, opt.init(lora), []
  for step in range(k):
    g = _loss_grad(graphdef, base, y, {key: v[step] for key, v in batches.items()})
    norm = float(optax.global_norm(g))
    assert norm > clip  # clipping is active at every step
    g = jax.tree.map(lambda x: x * clip / norm, g)
    applied.append(g)
    upd, opt_state = opt.update(jax.tree.map(lambda g, ci, cc: g - ci + cc, g, c_i, c),
                                opt_state, y)
    y = optax.apply_updates(y, upd)
  mean_applied = jax.tree.map(lambda *gs: sum(gs) / k, *applied)
  for got, want in zip(jax.tree.leaves(new_state["c"]), jax.tree.leaves(mean_applied)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-10)
  for got, want in zip(jax.tree.leaves(local), jax.tree.leaves(y)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-7)


def test_fedsa_lora_hospital_that_never_trained_uses_the_global_b(tiny):
  graphdef, base, lora = tiny
  alg = F.make_algorithm("fedsa_lora")
  tr = F.LocalTraining(local_steps=1, learning_rate=1e-2)
  fr = F.FederatedRound(graphdef, alg, tr, num_clients=3)
  state = F.init_state(alg, lora, 3, 0)
  for r in range(2):  # hospitals 0 and 1 train, hospital 2 is never sampled
    state, _ = fr(state, base, client_batches(2, 1, seed=r), [0, 1], np.array([10, 30]))
  g = state["global_lora"]
  one = lambda i: jax.tree.map(lambda x: x[i], state["client_states"])
  np.testing.assert_array_equal(np.asarray(state["client_states"]["trained"]), [True, True, False])
  never = alg.personal_lora(g, one(2))
  for got, want in zip(jax.tree.leaves(never), jax.tree.leaves(g)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # The global B is the sample-weighted mean of the trained hospitals' B (not the initial zeros)
  # and a trained hospital keeps its own B.
  b0, b1 = _parts(one(0)["lora"], "lora_B"), _parts(one(1)["lora"], "lora_B")
  for gb, x0, x1 in zip(_parts(g, "lora_B"), b0, b1):
    np.testing.assert_allclose(np.asarray(gb), 0.25 * np.asarray(x0) + 0.75 * np.asarray(x1),
                               rtol=1e-5, atol=1e-8)
    assert float(jnp.abs(gb).max()) > 0
  for got, want in zip(_parts(alg.personal_lora(g, one(0)), "lora_B"), b0):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
