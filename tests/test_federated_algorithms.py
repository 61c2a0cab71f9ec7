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


def _server_rounds(alg, deltas_a):
  """Runs len(deltas_a) server steps of one client whose update moves lora_A by the given
  amount (lora_B by 0); returns lora_A [[x]] after each round."""
  g = _tree([[0.0]], [[0.0]])
  ss = alg.init_server_state(g)
  out = []
  for d in deltas_a:
    locs = _stack(_tree(g["layer"]["lora_A"] + d, g["layer"]["lora_B"]))
    g, ss, _ = alg.server_update(_inputs(alg, g, locs, [1])._replace(server_state=ss))
    out.append(float(g["layer"]["lora_A"][0, 0]))
    assert float(g["layer"]["lora_B"][0, 0]) == 0.0  # m stays 0 for a part that never moves
  return out


# Reddi et al. 2021, Algorithm 2, worked by hand with tau = 1 (v starts at 1), b1 = b2 = 0.5,
# eta = 1 and Delta = 7, 1, -3:  m = 3.5, 2.25, -0.375.
ADAM_V = (25.0, 13.0, 11.0)  # v = 0.5 v + 0.5 Delta^2: (1 + 49)/2, (25 + 1)/2, (13 + 9)/2
YOGI_V = (25.5, 25.0, 20.5)  # v -= 0.5 Delta^2 sign(v - Delta^2): 1 + 24.5, 25.5 - 0.5, 25 - 4.5
ADAGRAD_V = (50.0, 51.0, 60.0)  # v += Delta^2
M = (3.5, 2.25, -0.375)


@pytest.mark.parametrize("name,v", [("fedadam", ADAM_V), ("fedyogi", YOGI_V),
                                    ("fedadagrad", ADAGRAD_V)])
def test_adaptive_server_optimizers_follow_reddi_algorithm_2(name, v):
  alg = make_algorithm(name, server_lr=1.0, server_b1=0.5, server_b2=0.5, server_eps=1.0)
  x, expected = 0.0, []
  for m_t, v_t in zip(M, v):
    x += m_t / (np.sqrt(v_t) + 1.0)
    expected.append(x)
  np.testing.assert_allclose(_server_rounds(alg, [7.0, 1.0, -3.0]), expected, rtol=1e-6)
  # The first FedAdam step is 3.5 / 6, not optax.adam's bias-corrected ~1 (Delta / |Delta|).
  if name == "fedadam":
    assert expected[0] == pytest.approx(7 / 12)


def test_fedadam_server_lr_scales_every_step_and_sign_follows_delta():
  alg = make_algorithm("fedadam", server_lr=0.1, server_b1=0.5, server_b2=0.5, server_eps=1.0)
  x = _server_rounds(alg, [-7.0, -1.0, 3.0])
  np.testing.assert_allclose(x, [-0.1 * 3.5 / 6, -0.1 * (3.5 / 6 + 2.25 / (np.sqrt(13) + 1)),
                                 -0.1 * (3.5 / 6 + 2.25 / (np.sqrt(13) + 1)
                                         - 0.375 / (np.sqrt(11) + 1))], rtol=1e-6)


def test_fedavgm_is_hsu_server_momentum():
  # v <- 0.5 v + g (g = -Delta), x <- x - eta v, eta = 0.5, Delta = 7, 1, -3:
  # v = -7, -4.5, 0.75 -> x = 3.5, 5.75, 5.375.
  alg = make_algorithm("fedavgm", server_lr=0.5, server_momentum=0.5)
  np.testing.assert_allclose(_server_rounds(alg, [7.0, 1.0, -3.0]), [3.5, 5.75, 5.375],
                             rtol=1e-6)
  # Two clients: the step is the sample-weighted mean Delta ((1*1 + 3*5) / 4 = 4), eta 0.5.
  g = _tree([[1.0]], [[0.0]])
  locs = _stack(_tree([[2.0]], [[0.0]]), _tree([[6.0]], [[0.0]]))
  new, _, _ = alg.server_update(_inputs(alg, g, locs, [1, 3]))
  np.testing.assert_allclose(new["layer"]["lora_A"], [[3.0]], rtol=1e-6)


def test_fedopt_rejects_bad_tau():
  with pytest.raises(ValueError, match="tau > 0"):
    make_algorithm("fedyogi", server_eps=0.0)


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
  alg = make_algorithm("scaffold")
  g = _tree([[1.0]], [[2.0]])
  ss = alg.init_server_state(g)
  ss = {**ss, "c": _tree([[0.2]], [[-0.2]])}
  ci = {"c": _tree([[0.1]], [[0.0]])}
  grads = alg.correct_grads(_tree([[1.0]], [[1.0]]), ci, ss)
  np.testing.assert_allclose(grads["layer"]["lora_A"], [[1.0 - 0.1 + 0.2]], rtol=1e-6)
  np.testing.assert_allclose(grads["layer"]["lora_B"], [[1.0 - 0.0 - 0.2]], rtol=1e-6)
  # A sub-tree of gradients (only some parts trained) is corrected with the matching parts.
  only_b = alg.correct_grads({"layer": {"lora_B": jnp.ones((1, 1))}}, ci, ss)
  np.testing.assert_allclose(only_b["layer"]["lora_B"], [[0.8]], rtol=1e-6)
  # c_i+ is the mean of the clipped, uncorrected gradients the client applied.
  mean_grad = _tree([[0.4]], [[-0.3]])
  new_ci = alg.client_final(ci, ss, g, _tree([[0.0]], [[3.0]]), mean_grad)
  np.testing.assert_allclose(new_ci["c"]["layer"]["lora_A"], [[0.4]], rtol=1e-6)
  np.testing.assert_allclose(new_ci["c"]["layer"]["lora_B"], [[-0.3]], rtol=1e-6)
  # Server: c += (1/N) sum_valid (c_i+ - c_i); N = 4 clients, two valid of three this round.
  old = _stack(ci["c"], ci["c"], ci["c"])
  new = _stack(new_ci["c"], _tree([[1.1]], [[1.0]]), _tree([[9.0]], [[9.0]]))
  local = _tree([[0.0]], [[3.0]])
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
  cs = {"lora": _tree([[7.0]], [[8.0]]), "trained": jnp.ones((), bool)}
  start = fedsa.client_start(g, cs)
  assert float(start["layer"]["lora_A"][0, 0]) == 1.0  # shared A from the server
  assert float(start["layer"]["lora_B"][0, 0]) == 8.0  # personal B
  # A client that never trained has no B of its own: the global B.
  never = fedsa.client_start(g, {**cs, "trained": jnp.zeros((), bool)})
  assert float(never["layer"]["lora_B"][0, 0]) == 2.0
  assert float(fedsa.personal_lora(g, {**cs, "trained": jnp.zeros((), bool)})["layer"]["lora_B"][0, 0]) == 2.0
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


def test_fedex_lora_keeps_the_accumulated_correction_exact_in_bf16():
  """Three rounds on a bf16 base: W + L - W_0 equals sum_t scaling (mean B A - B' A') (f64)."""
  scaling, out, r, inp, c = 2.0, 64, 4, 48, 3
  key = jax.random.key(3)
  w0 = (0.02 * jax.random.normal(key, (out, inp))).astype(jnp.bfloat16)
  base = {"q_proj": {"weight": w0}}
  fedex = make_algorithm("fedex_lora", lora_scaling=scaling)
  g = {"q_proj": {"lora_A": 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (r, inp)),
                  "lora_B": jnp.zeros((out, r))}}
  ss = fedex.init_server_state(g)
  counts = np.array([2.0, 3.0, 5.0])
  w = counts / counts.sum()
  reference = np.zeros((out, inp))
  for t in range(3):
    k = jax.random.fold_in(key, 10 + t)
    locs = {"q_proj": {
        "lora_A": g["q_proj"]["lora_A"][None] + 0.05 * jax.random.normal(k, (c, r, inp)),
        "lora_B": g["q_proj"]["lora_B"][None]
                  + 2e-4 * jax.random.normal(jax.random.fold_in(k, 1), (c, out, r))}}
    a64 = np.asarray(locs["q_proj"]["lora_A"], np.float64)
    b64 = np.asarray(locs["q_proj"]["lora_B"], np.float64)
    mean_product = np.einsum("c,cor,cri->oi", w, b64, a64)
    product_of_means = np.einsum("c,cor->or", w, b64) @ np.einsum("c,cri->ri", w, a64)
    reference += scaling * (mean_product - product_of_means)
    g, ss, base = fedex.server_update(_inputs(fedex, g, locs, counts, base=base)
                                      ._replace(server_state=ss))
  weight = base["q_proj"]["weight"]
  assert weight.dtype == jnp.bfloat16
  accumulated = (np.asarray(weight, np.float64) - np.asarray(w0, np.float64)
                 + np.asarray(ss["base_lo"]["q_proj"], np.float64))
  rel = np.linalg.norm(accumulated - reference) / np.linalg.norm(reference)
  assert rel < 1e-5, rel
  # The residual is far below bf16's spacing: the bf16 weight alone would lose most of it.
  assert np.median(np.abs(reference)) < 3e-5  # bf16 spacing near 0.02 is 1.2e-4
  naive = np.asarray(weight, np.float64) - np.asarray(w0, np.float64)
  assert np.linalg.norm(naive - reference) / np.linalg.norm(reference) > 0.1
  # ... and the bf16 weight is the nearest bf16 to the f32 master weight.
  master = np.asarray(w0, np.float32) + accumulated.astype(np.float32)
  np.testing.assert_array_equal(np.asarray(weight), master.astype(jnp.bfloat16))
