"""Per-hospital noise calibration (`privacy.calibration="per_client"`): each hospital's own z
reaches the target epsilon by dp-accounting's own PLD, a client's update in a round with
per-client z equals its update in a round where every client has that z, the plan, resume and
refusals, and the ledger's rules with a list of z (blocks: test_ledger_privacy.py)."""

import json

import dp_accounting as dpa
import jax
import numpy as np
import pytest

from fedlora_jax import federated as F
from fedlora_jax import ledger as L
from fedlora_jax.federated.safeguards import Safeguards
from fedlora_jax.privacy import ExampleDP
from fedlora_jax.privacy import accounting as A
from fedlora_jax.privacy.plan import privacy_plan
from fedlora_jax.run.report import noise_words
from fedlora_jax.sites.job import check_job
from tests.fed_fixtures import client_batches, tiny_model
from tests.run_fixtures import default_config

NAMES = ["small", "large"]
SIZES = [50, 800]
B, STEPS, DELTA = 8, 40, 1e-5


def _pld_epsilon(n: int, b_max: int, z: float, steps: int) -> float:
  """The reference: dp-accounting's PLD of `steps` truncated Poisson-subsampled Gaussian steps."""
  acc = dpa.pld.PLDAccountant(value_discretization_interval=A.PLD_DISCRETIZATION)
  acc.compose(dpa.dp_event.TruncatedSubsampledGaussianDpEvent(n, B / n, b_max, z), steps)
  return acc.get_epsilon(DELTA)


def test_each_hospital_gets_the_z_that_reaches_the_target():
  b_max = A.poisson_max_batch(SIZES, B)
  zs = A.calibrate_example_per_client(SIZES, B, b_max, STEPS, 2.0, DELTA)
  assert zs[0] > zs[1]  # sampled at a lower rate, a larger hospital needs less noise
  for n, z in zip(SIZES, zs):
    assert _pld_epsilon(n, b_max, z, STEPS) == pytest.approx(2.0, abs=0.02)
  # the accountant with a z per hospital agrees with the reference for each hospital
  acc = A.ExampleAccountant(NAMES, SIZES, B, b_max, 4, zs, DELTA, target_epsilon=2.0)
  for _ in range(STEPS // 4):
    spent = acc.after_round([0, 1])
  for name, n, z in zip(NAMES, SIZES, zs):
    assert spent[name] == pytest.approx(_pld_epsilon(n, b_max, z, STEPS), rel=1e-9)
  assert acc.would_exceed([1])  # every hospital is at its budget


def test_a_client_trains_with_its_own_z_as_if_everyone_had_it():
  """Slot c of a per-client round equals slot c of a shared-z round at z_c (same secret keys):
  each client's noise is its own z times C, and no other client's z leaks into it."""
  graphdef, base, lora = tiny_model()
  alg = F.make_algorithm("fedavg")
  tr = F.LocalTraining(local_steps=2, optimizer="sgd", learning_rate=0.1, grad_clip_norm=None)
  batches, ids = client_batches(3, 2, b=3, seed=2), np.arange(3)
  keys = np.asarray([[1, 2], [3, 4], [5, 6]], np.uint32)
  zs = (2.0, 0.5, 1.0)

  def train(z):
    fr = F.FederatedRound(graphdef, alg, tr, 3,
                          safeguards=Safeguards(example_dp=ExampleDP(z, 0.1, 3.0)))
    return fr.train(F.init_state(alg, lora, 3, 0), base, batches, ids, keys)[0]

  per_client = train(zs)
  shared = {z: train(z) for z in zs[:2]}
  for c, z in enumerate(zs[:2]):
    for a, b in zip(jax.tree.leaves(per_client), jax.tree.leaves(shared[z])):
      np.testing.assert_allclose(np.asarray(a)[c], np.asarray(b)[c], rtol=1e-5, atol=1e-7)
  # and the z matters: slot 0 at z 2.0 differs from slot 0 at z 0.5
  assert any(not np.allclose(np.asarray(a)[0], np.asarray(b)[0])
             for a, b in zip(jax.tree.leaves(per_client), jax.tree.leaves(shared[0.5])))


def _cfg(**kw):
  return default_config(**{"privacy__level": "example", "privacy__target_epsilon": 2.0, **kw})


def test_the_plan_calibrates_per_hospital_and_a_resume_keeps_the_list():
  sizes = [60, 400]
  cfg = _cfg(privacy__calibration="per_client")
  plan = privacy_plan(cfg, NAMES, sizes, 2)
  shared = privacy_plan(_cfg(), NAMES, sizes, 2)
  assert isinstance(plan.noise_multiplier, list) and len(plan.noise_multiplier) == 2
  assert plan.noise_multiplier[0] == pytest.approx(shared.noise_multiplier)
  assert plan.noise_multiplier[1] < shared.noise_multiplier
  assert plan.safeguards.example_dp.noise_multiplier == tuple(plan.noise_multiplier)
  record = json.loads(json.dumps(plan.record()))  # privacy.json
  assert record["calibration"] == "per_client" and "calibration" not in shared.record()
  cfg.fed.rounds *= 2  # a resume keeps the z its finished rounds were accounted at
  assert privacy_plan(cfg, NAMES, sizes, 2, recorded=record).noise_multiplier == \
      plan.noise_multiplier
  # after the configured rounds every hospital is at the target (shared z: only the smallest)
  rounds = [cfg.fed.rounds // 2] * 2
  assert list(plan.accountant.epsilons(rounds).values()) == pytest.approx([2.0] * 2, abs=0.02)
  assert shared.accountant.epsilons(rounds)["large"] < 1.0
  words = noise_words(plan.noise_multiplier, NAMES)
  assert words.startswith("noise multiplier per hospital small ")


@pytest.mark.parametrize("overrides,message", [
    (dict(privacy__calibration="each"), "unknown privacy.calibration 'each'"),
    (dict(privacy__calibration="per_client", privacy__level="client"), "calibration='per_client'"),
    (dict(privacy__calibration="per_client", privacy__target_epsilon=0.0,
          privacy__noise_multiplier=1.0), "calibration='per_client'"),
])
def test_bad_calibrations_are_clear_errors(overrides, message):
  with pytest.raises(ValueError, match=message):
    privacy_plan(_cfg(**overrides), NAMES, SIZES, 2)


def test_sites_mode_refuses_per_client_calibration():
  with pytest.raises(ValueError, match="simulation and pod only"):
    check_job(_cfg(privacy__calibration="per_client"))


def test_the_ledger_rules_take_a_z_per_hospital():
  zs = [1.9, 1.1, 0.7]
  rules = L.make_rules(algorithm="fedavg", privacy_unit="example", delta=DELTA,
                       noise_multiplier=zs, clients_per_round=3, cosign="none")
  assert rules["privacy"]["noise_multiplier"] == zs
  for bad in ([1.0, -0.1], []):
    with pytest.raises(ValueError, match="noise multiplier out of range"):
      L.make_rules(algorithm="fedavg", privacy_unit="example", delta=DELTA,
                   noise_multiplier=bad, clients_per_round=3, cosign="none")
