"""The jitted, vmapped round on a tiny model: equals a per-client loop, exact FedProx pull,
determinism, quarantine of non-finite clients, bad inputs, and base memory not per client."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedlora_jax import federated as F
from fedlora_jax import models
from fedlora_jax.federated.algorithms import FedProx
from tests.fed_fixtures import client_batches, tiny_model

COUNTS = np.array([10, 30, 60])


@pytest.fixture(scope="module")
def tiny():
  return tiny_model()


def _run(tiny, alg, training, c=3, seed=0, rounds=1, ids=None, counts=COUNTS, batches=None,
         state=None):
  graphdef, base, lora = tiny
  fr = F.FederatedRound(graphdef, alg, training, num_clients=3)
  state = F.init_state(alg, lora, 3, seed) if state is None else state
  out = []
  for r in range(rounds):
    b = client_batches(c, training.local_steps, seed=r) if batches is None else batches
    res = fr(state, base, b, np.arange(c) if ids is None else ids, counts[:c])
    state, metrics = res[0], res[-1]
    out.append(metrics)
  return fr, state, out


def test_vmapped_round_equals_sequential_client_loop(tiny):
  graphdef, base, lora = tiny
  tr = F.LocalTraining(local_steps=2, learning_rate=1e-2)
  alg = F.make_algorithm("fedavg")
  fr, state, (metrics,) = _run(tiny, alg, tr)
  batches = client_batches(3, 2, seed=0)
  round_key = jax.random.fold_in(jax.random.PRNGKey(0), 0)
  one = jax.jit(fr.client_train)
  locals_, losses = [], []
  for c in range(3):
    b = {k: v[c] for k, v in batches.items()}
    l, _, loss = one(base, lora, alg.init_server_state(lora), {}, b,
                     jax.random.fold_in(round_key, c), np.zeros((2,), np.uint32))
    locals_.append(l)
    losses.append(loss)
  np.testing.assert_allclose(np.asarray(metrics["loss"]), np.stack(losses), rtol=1e-5)
  w = COUNTS / COUNTS.sum()
  expected = jax.tree.map(lambda *xs: sum(wi * x for wi, x in zip(w, xs)), *locals_)
  for a, b in zip(jax.tree.leaves(state["global_lora"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
  assert int(state["round"]) == 1
  # Training moved the adapter and lowered the loss on the clients' own batches.
  assert float(jnp.abs(jax.tree.leaves(state["global_lora"])[1] - jax.tree.leaves(lora)[1]).max()) > 0
  np.testing.assert_array_equal(np.asarray(metrics["valid"]), [True] * 3)
  np.testing.assert_allclose(np.asarray(metrics["weights"]), w, rtol=1e-6)


def test_same_seed_same_result_twice(tiny):
  tr = F.LocalTraining(local_steps=2, learning_rate=1e-2)
  alg = F.make_algorithm("fedavg")
  _, s1, m1 = _run(tiny, alg, tr, rounds=2)
  _, s2, m2 = _run(tiny, alg, tr, rounds=2)
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(m1[1]["loss"]), np.asarray(m2[1]["loss"]))


def test_fedprox_mu0_is_fedavg_and_mu_pulls_by_the_computed_amount(tiny):
  graphdef, base, lora = tiny
  lr, mu = 0.05, 0.5
  tr = F.LocalTraining(local_steps=2, optimizer="sgd", learning_rate=lr, grad_clip_norm=None)
  counts = np.array([1])
  batches = client_batches(1, 2, seed=5)
  _, s_avg, _ = _run(tiny, F.make_algorithm("fedavg"), tr, c=1, counts=counts, batches=batches)
  _, s_p0, _ = _run(tiny, FedProx(mu=0.0), tr, c=1, counts=counts, batches=batches)
  _, s_mu, _ = _run(tiny, FedProx(mu=mu), tr, c=1, counts=counts, batches=batches)
  for a, b in zip(jax.tree.leaves(s_avg["global_lora"]), jax.tree.leaves(s_p0["global_lora"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Step 1 starts at the global model (zero proximal gradient): w1 = g - lr * grad L0(g).
  # Step 2 differs only by the proximal gradient: w2_mu - w2_0 = -lr * mu * (w1 - g).
  b0 = {k: v[0, 0] for k, v in batches.items()}
  g0 = jax.jit(jax.grad(lambda l: models.lm_loss(graphdef, base, l, b0)[0]))(lora)
  w1_minus_g = jax.tree.map(lambda g: -lr * g, g0)
  for d_mu, d_0, step1 in zip(jax.tree.leaves(s_mu["global_lora"]),
                              jax.tree.leaves(s_p0["global_lora"]), jax.tree.leaves(w1_minus_g)):
    np.testing.assert_allclose(np.asarray(d_mu - d_0), -lr * mu * np.asarray(step1), atol=1e-7)
  moved = sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(w1_minus_g))
  assert moved > 1e-3


def test_nonfinite_client_is_quarantined_and_all_bad_round_changes_nothing(tiny):
  graphdef, base, lora = tiny
  alg = F.make_algorithm("fedsa_lora")
  tr = F.LocalTraining(local_steps=1, learning_rate=1e-2)
  fr = F.FederatedRound(graphdef, alg, tr, num_clients=3)
  state = F.init_state(alg, lora, 3, 0)
  poison = lambda x: x.at[1].set(jnp.nan) if x.ndim == 3 else x
  state["client_states"] = jax.tree.map(poison, state["client_states"])
  state["client_states"]["trained"] = jnp.ones(3, bool)  # else client 1 starts from the global B
  g_before = jax.tree.map(np.asarray, state["global_lora"])
  state, _, metrics = fr(state, base, client_batches(3, 1), [0, 1, 2], COUNTS)
  np.testing.assert_array_equal(np.asarray(metrics["valid"]), [True, False, True])
  np.testing.assert_allclose(np.asarray(metrics["weights"]), [10 / 70, 0.0, 60 / 70], rtol=1e-6)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["global_lora"]))
  changed = [not np.array_equal(np.asarray(a), b)
             for a, b in zip(jax.tree.leaves(state["global_lora"]), jax.tree.leaves(g_before))]
  assert any(changed)
  # Client 1's personal state is kept as it was (still NaN), not overwritten.
  assert np.isnan(np.asarray(jax.tree.leaves(state["client_states"])[0][1])).all()

  state["client_states"] = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan),
                                        state["client_states"])
  g_before = jax.tree.map(np.asarray, state["global_lora"])
  state, _, metrics = fr(state, base, client_batches(3, 1), [0, 1, 2], COUNTS)
  assert not np.asarray(metrics["valid"]).any()
  for a, b in zip(jax.tree.leaves(state["global_lora"]), jax.tree.leaves(g_before)):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert int(state["round"]) == 2


def test_fedex_round_updates_the_base_and_partial_participation(tiny):
  graphdef, base, lora = tiny
  base = jax.tree.map(jnp.copy, base)
  alg = F.make_algorithm("fedex_lora", lora_scaling=2.0)
  tr = F.LocalTraining(local_steps=1, learning_rate=1e-2)
  fr = F.FederatedRound(graphdef, alg, tr, num_clients=3)
  state = F.init_state(alg, lora, 3, 0)
  w_before = np.asarray(base["model"]["layers"][0]["self_attn"]["q_proj"]["weight"])
  state, new_base, metrics = fr(state, base, client_batches(2, 1), [0, 2], COUNTS[[0, 2]])
  w_after = np.asarray(new_base["model"]["layers"][0]["self_attn"]["q_proj"]["weight"])
  assert np.abs(w_after - w_before).max() > 0
  np.testing.assert_allclose(np.asarray(metrics["weights"]), [10 / 70, 60 / 70], rtol=1e-6)
  # Norms are not adapted: their base weights are untouched.
  np.testing.assert_array_equal(np.asarray(new_base["model"]["norm"]["weight"]),
                                np.asarray(tiny[1]["model"]["norm"]["weight"]))


def test_bad_inputs_give_clear_errors(tiny):
  graphdef, base, lora = tiny
  alg = F.make_algorithm("fedavg")
  fr = F.FederatedRound(graphdef, alg, F.LocalTraining(local_steps=2), num_clients=3)
  state = F.init_state(alg, lora, 3, 0)
  good = client_batches(3, 2)
  with pytest.raises(ValueError, match="at least one participating client"):
    fr(state, base, {k: v[:0] for k, v in good.items()}, [], [])
  with pytest.raises(ValueError, match="local_steps=2"):
    fr(state, base, client_batches(3, 1), [0, 1, 2], COUNTS)
  bad = dict(good, loss_mask=good["loss_mask"][:, :, :, :5])
  with pytest.raises(ValueError, match="'loss_mask' has shape"):
    fr(state, base, bad, [0, 1, 2], COUNTS)
  with pytest.raises(ValueError, match="distinct"):
    fr(state, base, good, [0, 1, 1], COUNTS)
  with pytest.raises(ValueError, match="num_samples"):
    fr(state, base, good, [0, 1, 2], COUNTS[:2])
  with pytest.raises(ValueError, match="lack"):
    fr(state, base, {"input_ids": good["input_ids"]}, [0, 1, 2], COUNTS)


def test_base_params_are_not_replicated_per_client():
  cfg = models.preset("qwen3-tiny", vocab_size=4096, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=64)
  graphdef, base, lora = tiny_model(cfg=cfg)
  base_bytes = sum(x.nbytes for x in jax.tree.leaves(base))
  alg = F.make_algorithm("fedavg")
  tr = F.LocalTraining(local_steps=1, max_target_tokens=3)
  sizes = {}
  for c in (2, 8):
    fr = F.FederatedRound(graphdef, alg, tr, num_clients=c)
    state = F.init_state(alg, lora, c, 0)
    mem = fr.lower(state, base, client_batches(c, 1, b=1, vocab=4096), np.arange(c),
                   np.ones(c)).compile().memory_analysis()
    sizes[c] = mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
  per_client = (sizes[8] - sizes[2]) / 6
  # A per-client copy of the base would add >= base_bytes per client.
  assert per_client < 0.2 * base_bytes, (per_client, base_bytes)


def test_two_phase_round_equals_fused_and_rejected_client_is_excluded(tiny):
  graphdef, base, lora = tiny
  alg = F.make_algorithm("fedavg")
  tr = F.LocalTraining(local_steps=1, learning_rate=1e-2)
  fr = F.FederatedRound(graphdef, alg, tr, num_clients=3)
  batches = client_batches(3, 1, seed=3)
  fused, _, _ = fr(F.init_state(alg, lora, 3, 0), base, batches, [0, 1, 2], COUNTS)
  state = F.init_state(alg, lora, 3, 0)
  trained = fr.train(state, base, batches, [0, 1, 2])
  local_c = trained[0]
  two, _, metrics = fr.aggregate(state, base, trained, [0, 1, 2], COUNTS, [True, True, True])
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(two)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)
  # Rejecting client 2 (e.g. a bad attestation): the global is the mean of clients 0 and 1 only.
  state = F.init_state(alg, lora, 3, 0)
  trained = fr.train(state, base, batches, [0, 1, 2])
  rej, _, metrics = fr.aggregate(state, base, trained, [0, 1, 2], COUNTS, [True, True, False])
  np.testing.assert_array_equal(np.asarray(metrics["valid"]), [True, True, False])
  expected = jax.tree.map(lambda x: (10 * x[0] + 30 * x[1]) / 40, local_c)
  for a, b in zip(jax.tree.leaves(rej["global_lora"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
