"""Robust aggregation rules: byzfl's implementations on random updates, hand-made cases with
known answers, invalid rows ignored, and the rule inside the server step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedlora_jax import federated as F
from fedlora_jax.federated import robust as R
from fedlora_jax.federated.algorithms import ServerInputs
from fedlora_jax.federated.safeguards import Safeguards
from tests.byzfl_reference import byzfl_aggregators
from tests.fed_fixtures import client_batches, tiny_model

ALL = np.ones(7, bool)


def _ours(name, x, valid=None, f=2):
  x = jnp.asarray(x, jnp.float32)
  valid = jnp.ones(x.shape[0], bool) if valid is None else jnp.asarray(valid)
  return np.asarray(R.RobustRule(name, f=f).aggregate(x, valid, valid / valid.sum()))


@pytest.mark.parametrize("name,make", [
    ("median", lambda B: B.Median()),
    ("trimmed_mean", lambda B: B.TrMean(f=2)),
    ("krum", lambda B: B.Krum(f=2)),
    ("multi_krum", lambda B: B.MultiKrum(f=2)),
    ("geometric_median", lambda B: B.GeometricMedian(nu=0.1, T=3)),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rules_equal_byzfl_on_random_updates(name, make, seed):
  B = byzfl_aggregators()
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(7, 50)).astype(np.float32)
  x[:2] += rng.normal(scale=5.0, size=(2, 50))  # two outliers, so the rules disagree with the mean
  ref = np.asarray(make(B)(x.astype(np.float64)))
  np.testing.assert_allclose(_ours(name, x), ref, atol=1e-5)
  assert np.abs(ref - x.mean(0)).max() > 1e-2


def test_hand_made_cases():
  x = np.array([[1.0, -5.0], [2.0, 0.0], [100.0, 1.0], [3.0, 2.0], [-50.0, 7.0]])
  np.testing.assert_allclose(_ours("median", x), [2.0, 1.0])
  np.testing.assert_allclose(_ours("median", x[:4]), [2.5, 0.5])  # even count: mean of middle two
  np.testing.assert_allclose(_ours("trimmed_mean", x, f=1), [2.0, 1.0])  # (1+2+3)/3, (0+1+2)/3
  # Three points clustered at the origin, two far away; with f = 2 each score sums the
  # v - f - 1 = 2 nearest: 0.02 for the centre, 0.05 for the others, so Krum picks the centre.
  y = np.array([[0.0, 0.0], [0.1, 0.0], [-0.1, 0.0], [9.0, 9.0], [-9.0, 9.0]])
  np.testing.assert_allclose(_ours("krum", y, f=2), [0.0, 0.0])
  # Multi-Krum averages the v - f = 3 best-scored rows, unweighted: the cluster.
  np.testing.assert_allclose(_ours("multi_krum", y, f=2), [0.0, 0.0], atol=1e-6)
  # The geometric median of a symmetric cross is its centre (from a start on the centre).
  z = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.0, 0.0]]) + 3.0
  gm = R.geometric_median(jnp.asarray(z), jnp.ones(5, bool), nu=1e-6, iters=50)
  np.testing.assert_allclose(np.asarray(gm), [3.0, 3.0], atol=1e-4)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum", "multi_krum",
                                  "geometric_median"])
def test_invalid_rows_are_ignored(name):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(7, 6)).astype(np.float32)
  valid = np.array([1, 1, 0, 1, 1, 1, 0], bool)
  poisoned = x.copy()
  poisoned[~valid] = 1e6
  np.testing.assert_allclose(_ours(name, poisoned, valid, f=1), _ours(name, x[valid], f=1),
                             atol=1e-5)


def test_norm_bounding_clips_long_rows_only():
  x = jnp.asarray([[3.0, 4.0], [0.3, 0.4]])
  np.testing.assert_allclose(np.asarray(R.bound_norms(x, 1.0)), [[0.6, 0.8], [0.3, 0.4]],
                             rtol=1e-6)
  rule = R.RobustRule("mean", norm_bound=1.0)
  np.testing.assert_allclose(np.asarray(rule.aggregate(x, jnp.ones(2, bool), jnp.array([.5, .5]))),
                             [0.45, 0.6], rtol=1e-6)


def test_bad_rule_settings_are_errors():
  with pytest.raises(ValueError, match="unknown robust rule"):
    R.RobustRule("mode")
  with pytest.raises(ValueError, match="more than 4 clients"):
    R.RobustRule("krum", f=2).check_clients(4)


def test_robust_rule_drives_the_algorithms_server_step():
  """FedAvg behind the median: global + median of the updates, whatever the sample weights."""
  g = {"a": jnp.zeros((2, 3)), "b": jnp.ones(4)}
  rng = np.random.default_rng(0)
  local = jax.tree.map(lambda x: x[None] + jnp.asarray(rng.normal(size=(5,) + x.shape),
                                                       jnp.float32), g)
  alg = F.make_algorithm("fedavg")
  valid = jnp.ones(5, bool)
  inp = ServerInputs(global_lora=g, server_state=alg.init_server_state(g), local_c=local,
                     weights_c=jnp.array([.9, .025, .025, .025, .025]), valid_c=valid,
                     old_client_state_c={}, new_client_state_c={}, base={}, num_clients=5)
  state = {"rng": jax.random.PRNGKey(0), "round": jnp.int32(0)}
  new_g, _, _ = Safeguards(robust=R.RobustRule("median")).server_update(alg, inp, state)
  for k in g:
    np.testing.assert_allclose(np.asarray(new_g[k]), np.median(np.asarray(local[k]), axis=0),
                               atol=1e-6)


@pytest.mark.parametrize("name,f", [("krum", 1), ("multi_krum", 1), ("trimmed_mean", 1),
                                    ("trimmed_mean", 2)])
def test_rules_degenerate_below_their_fewest_valid_clients(name, f):
  """Measured: one valid client fewer than `enough` accepts, the rule itself returns zeros or
  one client's update unchanged -- which is why such a round must not aggregate."""
  rule = R.RobustRule(name, f=f)
  x_cd = jnp.asarray(np.random.default_rng(3).normal(size=(6, 5)), jnp.float32)
  v = rule.min_valid()
  assert bool(rule.enough(jnp.arange(6) < v)) and not bool(rule.enough(jnp.arange(6) < v - 1))
  few = jnp.arange(6) < v - 1
  out = np.asarray(rule.aggregate(x_cd, few, jnp.full(6, 1 / 6)))
  one_slot = any(np.array_equal(out, np.asarray(x_cd[i])) for i in range(v - 1))
  assert one_slot or np.array_equal(out, np.zeros(5)), (name, out)
  at_least = np.asarray(rule.aggregate(x_cd, jnp.arange(6) < v, jnp.full(6, 1 / 6)))
  assert np.all(np.isfinite(at_least))


def test_a_round_with_too_few_valid_clients_keeps_the_global_adapter():
  graphdef, base, lora = tiny_model()
  alg = F.make_algorithm("fedavg")
  tr = F.LocalTraining(local_steps=1, learning_rate=1e-2)
  fr = F.FederatedRound(graphdef, alg, tr, 4,
                        safeguards=Safeguards(robust=R.RobustRule("trimmed_mean", f=1)))
  state = F.init_state(alg, lora, 4, 0)
  trained = fr.train(state, base, client_batches(4, 1), np.arange(4))
  accept = np.asarray([True, True, False, False])  # v = 2 <= 2f
  new, _, m = fr.aggregate(state, base, trained, np.arange(4), np.full(4, 10.0), accept)
  assert not bool(m["aggregated"])
  for a, b in zip(jax.tree.leaves(new["global_lora"]), jax.tree.leaves(lora)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
