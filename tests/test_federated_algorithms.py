"""Server and client hooks of each algorithm on two or three toy clients, against hand math."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedlora_jax.federated import aggregation, make_algorithm, sample_clients, clients_per_round
from fedlora_jax.federated.algorithms import ServerInputs


def _tree(a, b):
  return {"layer": {"lora_A": jnp.asarray(a, jnp.float32), "lora_B": jnp.asarray(b, jnp.float32)}}


def _stack(*trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _inputs(alg, global_lora, local_c, counts, valid=None, old_cs=None, new_cs=None, base=None,
            num_clients=3, uniform=False):
  valid = jnp.ones(len(counts), bool) if valid is None else jnp.asarray(valid)
  w = aggregation.client_weights(jnp.asarray(counts, jnp.float32), valid, uniform=uniform)
  cs = {} if old_cs is None else old_cs
  return ServerInputs(global_lora, alg.init_server_state(global_lora), local_c, w, valid, cs,
                      cs if new_cs is None else new_cs, base or {}, num_clients)


def test_fedavg_weights_by_sample_count_and_uniform():
  g = _tree([[0.0, 0.0]], [[0.0], [0.0]])
  locs = _stack(_tree([[1.0, 2.0]], [[1.0], [0.0]]), _tree([[3.0, 2.0]], [[0.0], [1.0]]),
                _tree([[5.0, -2.0]], [[2.0], [2.0]]))
  alg = make_algorithm("fedavg")
  new, _, _ = alg.server_update(_inputs(alg, g, locs, [1, 1, 2]))
  # (1*1 + 1*3 + 2*5) / 4 = 3.5 ; (2 + 2 - 4) / 4 = 0
  np.testing.assert_allclose(new["layer"]["lora_A"], [[3.5, 0.0]], atol=1e-7)
  np.testing.assert_allclose(new["layer"]["lora_B"], [[1.25], [1.25]], atol=1e-7)
  new_u, _, _ = alg.server_update(_inputs(alg, g, locs, [1, 1, 2], uniform=True))
  np.testing.assert_allclose(new_u["layer"]["lora_A"], [[3.0, 2.0 / 3.0]], atol=1e-6)
  # An excluded client has weight 0: (1*1 + 1*3) / 2 = 2
  new_x, _, _ = alg.server_update(_inputs(alg, g, locs, [1, 1, 2], valid=[True, True, False]))
  np.testing.assert_allclose(new_x["layer"]["lora_A"], [[2.0, 2.0]], atol=1e-7)
  w = aggregation.client_weights(jnp.array([5.0, 7.0]), jnp.array([False, False]), uniform=False)
  np.testing.assert_array_equal(w, [0.0, 0.0])


def test_fedavgm_and_fedadam_server_steps():
  g = _tree([[1.0, -1.0]], [[0.5], [0.0]])
  locs = _stack(_tree([[2.0, -1.0]], [[0.5], [1.0]]), _tree([[4.0, 0.0]], [[0.5], [-1.0]]))
  delta_a = np.array([[2.0, 0.5]])  # mean of (1, 0) and (3, 1)
  delta_b = np.array([[0.0], [0.0]])
  adam = make_algorithm("fedadam", server_lr=0.1, server_eps=1e-3)
  new, ss, _ = adam.server_update(_inputs(adam, g, locs, [1, 1]))
  # First Adam step on pseudo-gradient -delta: global + lr * delta / (|delta| + eps).
  np.testing.assert_allclose(new["layer"]["lora_A"],
                             np.array([[1.0, -1.0]]) + 0.1 * delta_a / (np.abs(delta_a) + 1e-3),
                             rtol=1e-6)
  np.testing.assert_allclose(new["layer"]["lora_B"], [[0.5], [0.0]], atol=1e-7)
  del delta_b, ss
  m = make_algorithm("fedavgm", server_lr=1.0, server_momentum=0.5)
  inp = _inputs(m, g, locs, [1, 1])
  g1, ss1, _ = m.server_update(inp)
  np.testing.assert_allclose(g1["layer"]["lora_A"], [[3.0, -0.5]], atol=1e-6)
  # Second step with the same delta relative to g1: momentum 0.5 -> step = delta * (1 + 0.5).
  locs2 = jax.tree.map(lambda l, a, b: l + (a - b)[None], locs, g1, g)
  g2, _, _ = m.server_update(inp._replace(global_lora=g1, server_state=ss1, local_c=locs2))
  np.testing.assert_allclose(g2["layer"]["lora_A"], np.array([[3.0, -0.5]]) + 1.5 * delta_a,
                             atol=1e-6)


def test_fedprox_penalty_value_and_gradient():
  alg = make_algorithm("fedprox", fedprox_mu=0.4)
  w = _tree([[1.0, 2.0]], [[3.0], [0.0]])
  g = _tree([[0.0, 1.0]], [[1.0], [0.0]])
  # mu/2 * (1 + 1 + 4) = 1.2
  assert float(alg.penalty(w, g)) == pytest.approx(1.2)
  grad = jax.grad(alg.penalty)(w, g)
  np.testing.assert_allclose(grad["layer"]["lora_A"], [[0.4, 0.4]], rtol=1e-6)
  np.testing.assert_allclose(grad["layer"]["lora_B"], [[0.8], [0.0]], rtol=1e-6)
  assert float(make_algorithm("fedprox", fedprox_mu=0.0).penalty(w, g)) == 0.0


def test_scaffold_control_variates():
  alg = make_algorithm("scaffold", local_lr=0.5)
  g = _tree([[1.0]], [[2.0]])
  ss = alg.init_server_state(g)
  ss = {**ss, "c": _tree([[0.2]], [[-0.2]])}
  ci = {"c": _tree([[0.1]], [[0.0]])}
  grads = alg.correct_grads(_tree([[1.0]], [[1.0]]), ci, ss)
  np.testing.assert_allclose(grads["layer"]["lora_A"], [[1.0 - 0.1 + 0.2]], rtol=1e-6)
  local = _tree([[0.0]], [[3.0]])
  new_ci = alg.client_final(ci, ss, g, local, num_steps=4)
  # c_i+ = c_i - c + (x - y)/(K lr) = 0.1 - 0.2 + (1 - 0)/2 = 0.4 ; 0 + 0.2 + (2 - 3)/2 = -0.3
  np.testing.assert_allclose(new_ci["c"]["layer"]["lora_A"], [[0.4]], rtol=1e-6)
  np.testing.assert_allclose(new_ci["c"]["layer"]["lora_B"], [[-0.3]], rtol=1e-6)
  # Server: c += (1/N) sum_valid (c_i+ - c_i); N = 4 clients, two valid of three this round.
  old = _stack(ci["c"], ci["c"], ci["c"])
  new = _stack(new_ci["c"], _tree([[1.1]], [[1.0]]), _tree([[9.0]], [[9.0]]))
  locs = _stack(local, local, local)
  inp = _inputs(alg, g, locs, [1, 1, 1], valid=[True, True, False], old_cs={"c": old},
                new_cs={"c": new}, num_clients=4)
  _, ss_new, _ = alg.server_update(inp._replace(server_state=ss))
  np.testing.assert_allclose(ss_new["c"]["layer"]["lora_A"], [[0.2 + (0.3 + 1.0) / 4]], rtol=1e-6)
  np.testing.assert_allclose(ss_new["c"]["layer"]["lora_B"], [[-0.2 + (-0.3 + 1.0) / 4]],
                             rtol=1e-6)


def _random_pairs(key, c=3, out=5, r=2, inp=4, same_a=False):
  ka, kb = jax.random.split(key)
  a = jax.random.normal(ka, (c, r, inp))
  if same_a:
    a = jnp.broadcast_to(a[0], a.shape)
  b = jax.random.normal(kb, (c, out, r))
  return {"q_proj": {"lora_A": a, "lora_B": b}}


def test_naive_average_is_not_exact_but_lora_exact_schemes_are():
  w = jnp.array([0.2, 0.3, 0.5])
  counts = [2, 3, 5]
  scaling = 1.5
  locs = _random_pairs(jax.random.key(0))
  exact = scaling * jnp.einsum("c,cor,cri->oi", w, locs["q_proj"]["lora_B"], locs["q_proj"]["lora_A"])
  g = jax.tree.map(lambda x: jnp.zeros_like(x[0]), locs)
  fedavg = make_algorithm("fedavg")
  naive, _, _ = fedavg.server_update(_inputs(fedavg, g, locs, counts))
  naive_prod = scaling * naive["q_proj"]["lora_B"] @ naive["q_proj"]["lora_A"]
  assert float(jnp.max(jnp.abs(naive_prod - exact))) > 0.1

  # FedEx-LoRA: base + scaling * B'A' equals base + the exact weighted mean of the products.
  fedex = make_algorithm("fedex_lora", lora_scaling=scaling)
  base = {"q_proj": {"weight": jnp.ones((5, 4))}}
  new, _, new_base = fedex.server_update(_inputs(fedex, g, locs, counts, base=base))
  effective = new_base["q_proj"]["weight"] + scaling * new["q_proj"]["lora_B"] @ new["q_proj"]["lora_A"]
  np.testing.assert_allclose(effective, 1.0 + exact, atol=1e-5)

  # FFA-LoRA: A shared and frozen -> averaging B alone is exact.
  locs_ffa = _random_pairs(jax.random.key(1), same_a=True)
  exact_ffa = jnp.einsum("c,cor,cri->oi", w, locs_ffa["q_proj"]["lora_B"],
                         locs_ffa["q_proj"]["lora_A"])
  ffa = make_algorithm("ffa_lora")
  assert ffa.trainable_parts == ("lora_B",)
  new_ffa, _, _ = ffa.server_update(_inputs(ffa, g, locs_ffa, counts))
  np.testing.assert_allclose(new_ffa["q_proj"]["lora_B"] @ new_ffa["q_proj"]["lora_A"], exact_ffa,
                             atol=1e-5)


def test_fedsa_keeps_personal_b_and_local_baseline_keeps_everything():
  g = _tree([[1.0]], [[2.0]])
  fedsa = make_algorithm("fedsa_lora")
  cs = {"lora": _tree([[7.0]], [[8.0]])}
  start = fedsa.client_start(g, cs)
  assert float(start["layer"]["lora_A"][0, 0]) == 1.0  # shared A from the server
  assert float(start["layer"]["lora_B"][0, 0]) == 8.0  # personal B
  loc = make_algorithm("local")
  assert float(loc.client_start(g, cs)["layer"]["lora_A"][0, 0]) == 7.0
  locs = _stack(_tree([[5.0]], [[5.0]]), _tree([[9.0]], [[9.0]]))
  new, _, _ = loc.server_update(_inputs(loc, g, locs, [1, 1]))
  assert float(new["layer"]["lora_A"][0, 0]) == 1.0


def test_sampling_is_deterministic_partial_and_varies_by_round():
  assert clients_per_round(10, fraction=0.3) == 3
  assert clients_per_round(10) == 10
  with pytest.raises(ValueError, match="zero participating"):
    clients_per_round(10, fraction=0.01)
  a = sample_clients(10, 3, seed=1, round_idx=0)
  np.testing.assert_array_equal(a, sample_clients(10, 3, seed=1, round_idx=0))
  rounds = {tuple(sample_clients(10, 3, seed=1, round_idx=r)) for r in range(10)}
  assert len(rounds) > 5
  assert all(len(set(r)) == 3 and max(r) < 10 for r in rounds)
  np.testing.assert_array_equal(sample_clients(4, 4, seed=3, round_idx=7), [0, 1, 2, 3])


def test_unknown_algorithm_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown algorithm 'fedsgd'"):
    make_algorithm("fedsgd")
