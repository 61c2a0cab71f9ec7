"""Client-level DP-FedAvg: with no noise it is the uniform FedAvg of clipped updates; the noise
has std z_u*C/m; removing one client moves the update sum by at most C and the shifted count by
at most 1/2 (measured); the noise split keeps the total multiplier; FFA-LoRA's frozen A gets no
noise; adaptive clipping moves C the paper's way and converges to the target quantile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedlora_jax import federated as F
from fedlora_jax.federated.algorithms import ServerInputs
from fedlora_jax.federated.safeguards import Safeguards
from fedlora_jax.privacy import AdaptiveClipping, ClientDP

RNG = np.random.default_rng(0)
UPDATES = jnp.asarray(RNG.normal(size=(5, 40)) * np.array([[0.1], [1.0], [3.0], [0.5], [8.0]]),
                      jnp.float32)
VALID = jnp.asarray([True, True, True, False, True])
KEY = np.asarray([3, 5], np.uint32)  # the server's secret key (any value in tests)


def _clipped_uniform_mean(x, valid, clip, m):
  x = np.asarray(x, np.float64)
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return (x * np.minimum(1.0, clip / norms) * np.asarray(valid)[:, None]).sum(0) / m


def test_no_noise_is_uniform_fedavg_of_clipped_updates():
  dp = ClientDP(0.0, 2.0, clients_per_round=5)
  mean, state = dp.aggregate(UPDATES, VALID, dp.init_state(), KEY)
  np.testing.assert_allclose(np.asarray(mean), _clipped_uniform_mean(UPDATES, VALID, 2.0, 5),
                             rtol=1e-5, atol=1e-7)
  assert float(state["clip_norm"]) == 2.0


def test_through_the_server_step_sample_counts_do_not_matter():
  g = {"a": jnp.zeros((5, 8)), "b": jnp.ones(0)}
  local = {"a": UPDATES.reshape(5, 5, 8), "b": jnp.ones((5, 0))}
  alg = F.make_algorithm("fedavg")
  sg = Safeguards(client_dp=ClientDP(0.0, 2.0, clients_per_round=5))
  w = jnp.asarray([0.7, 0.1, 0.1, 0.0, 0.1])
  inp = ServerInputs(global_lora=g, server_state=sg.init_server_state(alg.init_server_state(g)),
                     local_c=local, weights_c=w, valid_c=VALID, old_client_state_c={},
                     new_client_state_c={}, base={}, num_clients=5)
  new_g, new_ss, _ = sg.server_update(alg, inp, {"rng": jax.random.PRNGKey(0),
                                                 "round": jnp.int32(0)}, KEY)
  np.testing.assert_allclose(np.asarray(new_g["a"]).ravel(),
                             _clipped_uniform_mean(UPDATES, VALID, 2.0, 5), rtol=1e-5, atol=1e-7)
  assert set(new_ss) == {"opt", "privacy"}


def test_noise_std_is_z_c_over_m():
  dp = ClientDP(1.5, 0.4, clients_per_round=5)
  clean = _clipped_uniform_mean(UPDATES, VALID, 0.4, 5)
  draws = jax.vmap(lambda k: dp.aggregate(UPDATES, VALID, dp.init_state(), k)[0])(
      jax.random.key_data(jax.random.split(jax.random.key(1), 2000)))
  np.testing.assert_allclose((np.asarray(draws) - clean).std(), 1.5 * 0.4 / 5, rtol=0.05)


def test_removing_one_client_moves_each_release_by_at_most_its_bound():
  """Over random federations with norms around C, a client turned invalid (removed) moves the
  clipped sum by <= C and the shifted clipped count by <= 1/2: the sensitivities the noise split
  assumes (an unshifted 0/1 count moves by 1)."""
  rng = np.random.default_rng(7)
  dp = ClientDP(1.0, 1.0, 8, AdaptiveClipping(count_noise=1.0))
  worst_sum, worst_count = 0.0, 0.0
  for _ in range(200):
    updates = jnp.asarray(rng.normal(size=(8, 6)) * rng.uniform(0.05, 0.8, (8, 1)), jnp.float32)
    valid = jnp.asarray(rng.random(8) < 0.8)
    gone = int(rng.integers(8))
    with_c = dp.releases(updates, valid.at[gone].set(True), dp.init_state())
    without = dp.releases(updates, valid.at[gone].set(False), dp.init_state())
    worst_sum = max(worst_sum, float(jnp.linalg.norm(with_c[0] - without[0])))
    worst_count = max(worst_count, abs(float(with_c[1] - without[1])))
  assert worst_sum <= 1.0 + 1e-6 and worst_count <= 0.5
  assert worst_sum > 0.99 and worst_count == 0.5  # both bounds are reached


def test_ffa_lora_frozen_a_gets_no_noise():
  """FFA-LoRA trains B only: the DP-FedAvg noise must not move the frozen A."""
  g = {"layer": {"lora_A": jnp.ones((3, 4)), "lora_B": jnp.zeros((4, 3))}}
  local = {"layer": {"lora_A": jnp.ones((5, 3, 4)),
                     "lora_B": jnp.asarray(RNG.normal(size=(5, 4, 3)), jnp.float32)}}
  alg = F.make_algorithm("ffa_lora")
  sg = Safeguards(client_dp=ClientDP(2.0, 1.0, clients_per_round=5))
  inp = ServerInputs(global_lora=g, server_state=sg.init_server_state(alg.init_server_state(g)),
                     local_c=local, weights_c=jnp.full(5, 0.2), valid_c=jnp.ones(5, bool),
                     old_client_state_c={}, new_client_state_c={}, base={}, num_clients=5)
  new_g, _, _ = sg.server_update(alg, inp, {"rng": jax.random.PRNGKey(0), "round": jnp.int32(0)},
                                 KEY)
  np.testing.assert_array_equal(np.asarray(new_g["layer"]["lora_A"]), 1.0)
  assert float(jnp.abs(new_g["layer"]["lora_B"]).max()) > 0


def test_noise_split_keeps_the_total_multiplier():
  """Andrew et al., Thm. 1: z^-2 = z_u^-2 + (2 sigma_b)^-2."""
  dp = ClientDP(1.0, 1.0, 10, AdaptiveClipping(count_noise=1.0))
  z_u = dp.update_noise_multiplier
  np.testing.assert_allclose(z_u ** -2 + 2.0 ** -2, 1.0, rtol=1e-12)
  np.testing.assert_allclose(z_u, (1 - 0.25) ** -0.5, rtol=1e-12)
  with pytest.raises(ValueError, match="count noise"):
    ClientDP(1.0, 1.0, 10, AdaptiveClipping(count_noise=0.5))


def test_adaptive_clip_moves_toward_the_quantile_by_the_papers_step():
  """All norms below C: the unclipped fraction 1 > gamma, so C shrinks by exp(-eta (1 - gamma))."""
  dp = ClientDP(0.0, 100.0, 5, AdaptiveClipping(target_quantile=0.3, learning_rate=0.2))
  _, state = dp.aggregate(UPDATES, jnp.ones(5, bool), dp.init_state(), KEY)
  np.testing.assert_allclose(float(state["clip_norm"]), 100.0 * np.exp(-0.2 * 0.7), rtol=1e-6)
  _, state = dp.aggregate(UPDATES, jnp.ones(5, bool), {"clip_norm": jnp.float32(1e-3)},
                          KEY)  # all clipped: fraction 0, C grows
  np.testing.assert_allclose(float(state["clip_norm"]), 1e-3 * np.exp(0.2 * 0.3), rtol=1e-6)


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.8])
def test_adaptive_clip_converges_to_the_target_quantile(quantile):
  norms = np.exp(np.random.default_rng(1).normal(size=400))  # fixed update norms, log-normal
  updates = jnp.asarray(norms[:, None], jnp.float32)  # [400, 1]: row c has norm norms[c]
  dp = ClientDP(0.0, 50.0, 400, AdaptiveClipping(target_quantile=quantile, learning_rate=0.05))
  step = jax.jit(lambda s: dp.aggregate(updates, jnp.ones(400, bool), s, KEY)[1])
  state, history = dp.init_state(), []
  for _ in range(600):
    state = step(state)
    history.append(float(state["clip_norm"]))
  tail = np.asarray(history[-100:])
  lo, hi = np.quantile(norms, [quantile - 0.02, quantile + 0.02])
  assert lo <= tail.min() and tail.max() <= hi, (tail.min(), tail.max(), lo, hi)
  np.testing.assert_allclose(np.mean(norms <= tail[-1]), quantile, atol=0.02)
