"""Poisson client sampling for client-level DP over many clinics.

The sample comes from the server's secret, not the config seed (two secrets differ, one secret
replays, and nobody holding the published config, privacy.json and metrics reproduces it); each
client is in with probability q (binomial tests), truncated to m_max; DP-FedAvg divides by q N
whatever the realized count and releases its noise on an empty sample; the accountant's amplified
epsilon is dp-accounting's for the truncated subsampled Gaussian and the unamplified one the
Gaussian's over the rounds a client took part in; what cannot keep the guarantee is refused."""

import json
import os

import dp_accounting as dpa
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedlora_jax import federated as F
from fedlora_jax.data import build_icd10_benchmark, dominant_chapter_share
from fedlora_jax.data.clinics import check_clinics, clinic_names, split_records
from fedlora_jax.federated.placement import ClientPlacement
from fedlora_jax.federated.round import PAD
from fedlora_jax.ledger import make_rules, verify_ledger
from fedlora_jax.ledger.rules import applied_weights
from fedlora_jax.privacy import ClientDP
from fedlora_jax.privacy import accounting as A
from fedlora_jax.privacy.plan import check_privacy_config, privacy_plan
from fedlora_jax.privacy.secret import DpSecret
from fedlora_jax.run import experiment
from fedlora_jax.run.dp_keys import FEDAVG_SAMPLING, DpKeys
from fedlora_jax.run.loop import POISSON_STREAM
from fedlora_jax.run.setup import SetupError, check_clinic_config
from fedlora_jax.sites.job import check_job
from fedlora_jax.federated.safeguards import Safeguards
from tests.fed_fixtures import client_batches, tiny_model
from tests.run_fixtures import default_config as _cfg, tiny_config

KEY = np.asarray([3, 5], np.uint32)


# ------------------------------------------------------------------------------ the sample


def test_inclusion_frequency_is_q():
  rng = np.random.default_rng(1)
  n, q, draws = 60, 0.1, 3000
  counts = np.zeros(n, np.int64)
  for _ in range(draws):
    counts[F.poisson_clients(rng, n, q, n)] += 1
  assert stats.binomtest(int(counts.sum()), n * draws, q).pvalue > 1e-3
  # every client alike: the per-client counts are Binomial(draws, q) (chi-square over clients)
  chi2 = ((counts - draws * q) ** 2 / (draws * q * (1 - q))).sum()
  assert stats.chi2.sf(chi2, n) > 1e-3


def test_a_draw_over_m_max_keeps_a_uniform_subset_of_m_max():
  rng = np.random.default_rng(2)
  n, q, m_max, draws = 40, 0.5, 5, 2000
  counts = np.zeros(n, np.int64)
  for _ in range(draws):
    ids = F.poisson_clients(rng, n, q, m_max)
    assert len(ids) <= m_max and len(set(ids.tolist())) == len(ids)
    assert np.all(np.diff(ids) > 0)
    counts[ids] += 1
  p_full = stats.binom.sf(m_max - 1, n, q)  # P(draw >= m_max): ~1 here
  expected = m_max / n * p_full
  assert stats.binomtest(int(counts.sum()), n * draws, expected).pvalue > 1e-3
  assert A.poisson_max_clients(300, 0.05) == int(stats.binom.isf(A.OVERFLOW, 300, 0.05))


def _server_keys(directory, nonce="ab" * 16):
  return DpKeys("client", nonce, server=DpSecret.load_or_create(directory))


def test_the_sample_is_the_servers_secret_not_the_config_seed(tmp_path):
  n, q, m_max = 300, 0.05, A.poisson_max_clients(300, 0.05)
  a, b = _server_keys(tmp_path / "a"), _server_keys(tmp_path / "b")
  again = _server_keys(tmp_path / "a")  # the same secret read back (a resume)
  rounds = range(20)
  sa = [a.client_sample(n, q, m_max, r).tolist() for r in rounds]
  assert sa != [b.client_sample(n, q, m_max, r).tolist() for r in rounds]
  assert sa == [again.client_sample(n, q, m_max, r).tolist() for r in rounds]
  assert sa != [a.client_sample(n, q, m_max, r).tolist() for r in range(1, 21)]  # per round


def test_placement_gives_every_sample_the_same_slots():
  placement = ClientPlacement.create(300)
  for ids in ([], [3], list(range(0, 300, 13))):
    slots = placement.slot_ids(ids, 31)
    assert len(slots) == 31 and sorted(slots[slots != PAD].tolist()) == sorted(ids)


# ------------------------------------------------------------------------------ the mechanism


def test_the_mean_divides_by_q_n_not_the_realized_count():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 30)), jnp.float32)
  valid = jnp.asarray([True, True, True, False])
  dp = ClientDP(0.0, 100.0, clients_per_round=2.5, sampling_rate=0.25)
  mean, _ = dp.aggregate(x, valid, dp.init_state(), KEY)
  np.testing.assert_allclose(np.asarray(mean), np.asarray(x[:3]).sum(0) / 2.5, rtol=1e-5)


def test_an_empty_sample_releases_noise_of_std_z_c_over_q_n():
  dp = ClientDP(1.2, 0.5, clients_per_round=4.0, sampling_rate=0.1)
  x = jnp.zeros((3, 20000), jnp.float32)
  mean, _ = dp.aggregate(x, jnp.zeros(3, bool), dp.init_state(), KEY)
  np.testing.assert_allclose(float(np.asarray(mean).std()), 1.2 * 0.5 / 4.0, rtol=0.03)
  assert dp.releases_when_empty and not ClientDP(1.2, 0.5, 4).releases_when_empty


def test_the_engine_runs_an_empty_poisson_round_and_releases_its_noise():
  graphdef, base, lora = tiny_model()
  alg, tr = F.make_algorithm("fedavg"), F.LocalTraining(local_steps=1)
  poisson = Safeguards(client_dp=ClientDP(1.0, 1.0, 2.0, sampling_rate=0.5))
  fr = F.FederatedRound(graphdef, alg, tr, 3, safeguards=poisson)
  state = F.init_state(alg, lora, 3, 0, poisson)
  before = jax.tree.map(np.asarray, state["global_lora"])
  state, _, m = fr(state, base, client_batches(3, 1), [PAD] * 3, np.zeros(3), server_noise_key=KEY)
  assert bool(m["aggregated"]) and not np.asarray(m["valid"]).any()
  diff = np.concatenate([(np.asarray(a) - b).ravel()
                         for a, b in zip(jax.tree.leaves(state["global_lora"]),
                                         jax.tree.leaves(before))])
  assert stats.chi2.sf((diff ** 2).sum() / 0.5 ** 2, diff.size) > 1e-3  # N(0, (z C / q N)^2)
  assert stats.chi2.cdf((diff ** 2).sum() / 0.5 ** 2, diff.size) > 1e-3
  fixed = Safeguards(client_dp=ClientDP(1.0, 1.0, 3))
  with pytest.raises(ValueError, match="at least one participating client"):
    F.FederatedRound(graphdef, alg, tr, 3, safeguards=fixed)(
        F.init_state(alg, lora, 3, 0, fixed), base, client_batches(3, 1), [PAD] * 3,
        np.zeros(3), server_noise_key=KEY)


# ------------------------------------------------------------------------------ accounting


def test_amplified_and_unamplified_epsilons_are_dp_accountings():
  n, q, z, delta = 300, 0.05, 0.9, 1e-5
  m_max = A.poisson_max_clients(n, q)
  acc = A.ClientAccountant(n, z, delta, sampling_rate=q, max_clients=m_max)
  rng = np.random.default_rng(0)
  for _ in range(12):
    acc.count(F.poisson_clients(rng, n, q, m_max))
  ref = dpa.pld.PLDAccountant(value_discretization_interval=A.PLD_DISCRETIZATION)
  ref.compose(dpa.dp_event.TruncatedSubsampledGaussianDpEvent(n, q, m_max, z), 12)
  assert acc.spent() == {"federation": pytest.approx(ref.get_epsilon(delta), rel=1e-9)}
  gauss = dpa.pld.PLDAccountant(value_discretization_interval=A.PLD_DISCRETIZATION)
  gauss.compose(dpa.dp_event.GaussianDpEvent(z), max(acc.rounds_taken))
  assert acc.unamplified() == {"federation": pytest.approx(gauss.get_epsilon(delta), rel=1e-9)}
  assert acc.spent()["federation"] < acc.unamplified()["federation"]


def test_calibration_meets_the_amplified_target_and_the_budget_stops_there():
  n, q, rounds, target = 300, 0.05, 30, 2.0
  m_max = A.poisson_max_clients(n, q)
  z = A.calibrate_client(rounds, target, 1e-5, num_clients=n, sampling_rate=q, max_clients=m_max)
  acc = A.ClientAccountant(n, z, 1e-5, target, q, m_max)
  assert target - 0.02 < acc.amplified_after(rounds) <= target
  assert z < A.calibrate_client(rounds, target, 1e-5)  # amplification buys noise
  for r in range(rounds):
    assert not acc.would_exceed([]), r  # whoever the sample: every round is accounted alike
    acc.count([])
  assert acc.would_exceed([0, 1])


def test_plan_and_ledger_rules_under_poisson_sampling():
  names = [f"c{i}" for i in range(200)]
  plan = privacy_plan(_cfg(privacy__level="client", privacy__noise_multiplier=1.0,
                           privacy__client_sampling_rate=0.05), names, [10] * 200, 200)
  dp = plan.safeguards.client_dp
  assert dp.clients_per_round == pytest.approx(10.0) and dp.sampling_rate == 0.05
  assert plan.max_clients == A.poisson_max_clients(200, 0.05)
  assert plan.record()["expected_clients_per_round"] == pytest.approx(10.0)
  rules = make_rules(algorithm="fedavg", privacy_unit="client", delta=1e-5, noise_multiplier=1.0,
                     clients_per_round=plan.max_clients, expected_clients=10.0)
  assert applied_weights([5, 7, 9], rules) == [0.1, 0.1, 0.1]
  with pytest.raises(ValueError, match="expected_clients"):
    make_rules(algorithm="fedavg", privacy_unit="example", delta=1e-5, noise_multiplier=1.0,
               clients_per_round=20, expected_clients=10.0)


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("overrides,message", [
    (dict(privacy__level="client", privacy__noise_multiplier=1.0,
          privacy__client_sampling_rate=1.0), "must be in \\(0, 1\\)"),
    (dict(privacy__level="example", privacy__noise_multiplier=1.0,
          privacy__client_sampling_rate=0.1), "example-level DP samples"),
    (dict(privacy__level="client", privacy__noise_multiplier=1.0, fed__clients_per_round=3,
          privacy__client_sampling_rate=0.1), "fixed m"),
    (dict(privacy__level="client", privacy__noise_multiplier=1.0, fed__algorithm="scaffold",
          privacy__client_sampling_rate=0.1), "control variates"),
    (dict(privacy__client_sampling_rate=0.1, fed__robust_rule="median"), "fixed size"),
    (dict(privacy__client_sampling_rate=0.1, fed__centralized=True), "never sampled"),
])
def test_refused_sampling_configs(overrides, message):
  with pytest.raises(ValueError, match=message):
    check_privacy_config(_cfg(**overrides))


def test_sites_mode_refuses_poisson_sampling_and_clinics():
  with pytest.raises(ValueError, match="client_sampling_rate"):
    check_job(_cfg(privacy__level="client", privacy__noise_multiplier=1.0,
                   privacy__client_sampling_rate=0.1))
  with pytest.raises(ValueError, match="data.clinics"):
    check_job(_cfg(data__clinics=12))


@pytest.mark.parametrize("overrides,message", [
    (dict(data__clinics=12, data__source="files"), "splits the icd10 hospitals"),
    (dict(data__clinics=12, fed__centralized=True), "pooled client"),
    (dict(data__clinics=12, fed__algorithm="local"), "personal adapter"),
])
def test_refused_clinic_configs(overrides, message):
  with pytest.raises(SetupError, match=message):
    check_clinic_config(_cfg(**overrides))


def test_clinic_counts_are_checked_against_the_records():
  with pytest.raises(ValueError, match="not a multiple of the 3"):
    check_clinics(10, [50, 60, 70])
  with pytest.raises(ValueError, match="more than the smallest"):
    check_clinics(180, [50, 60, 70])
  check_clinics(150, [50, 60, 70])


def test_clinics_partition_their_hospital_and_keep_its_case_mix(tmp_path):
  bench = build_icd10_benchmark(seed=0, cache_dir=str(tmp_path), chapter_style="label")
  per = 10
  names = clinic_names(bench.client_names, per * len(bench.client_names))
  assert len(set(names)) == len(names) and names[0] == "cardiology-0"
  for h in bench.client_names[:2]:  # cardiology (70% circulatory), oncology (70% neoplasms)
    records = bench.clients[h].train
    parts = split_records(records, per)
    assert [r.id for p in parts for r in p] == [r.id for r in records]  # a partition, in order
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    top, share = dominant_chapter_share(records)
    for p in parts:
      assert stats.binomtest(sum(r.label == top for r in p), len(p), share).pvalue > 1e-4


# ------------------------------------------------------------------------------ end to end


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_clinics_run_poisson_client_dp_and_the_participants_stay_secret(tmp_path):
  """A run over 12 clinics: amplified and unamplified epsilons as the accountants give them, the
  ledger verifies with 1/(q N) weights, and the participants it publishes cannot be recomputed
  from config.json and privacy.json (only from the server's secret)."""
  q, clinics, rounds = 0.4, 12, 3
  work = str(tmp_path / "run")
  cfg = tiny_config(work, str(tmp_path / "cache"), **{
      "data.clinics": clinics, "fed.rounds": rounds, "privacy.level": "client",
      "privacy.noise_multiplier": 1.0, "privacy.clip_norm": 0.5,
      "privacy.client_sampling_rate": q})
  summary = experiment.run(cfg)
  records = [r for r in _records(work) if r["round"] >= 1]
  sample = [r["clients"] for r in records]
  names = [f"{h}-{i}" for h in summary["accuracy"] for i in range(2)]
  assert len(summary["accuracy"]) == 6 and all(set(s) <= set(names) for s in sample)
  m_max = A.poisson_max_clients(clinics, q)
  assert {r["slots"] for r in records} == {m_max}
  ref = A.epsilon(A.client_sampled_round_event(clinics, q, m_max, 1.0), rounds, 1e-5)
  taken = max(sum(n in s for s in sample) for n in names)
  assert summary["privacy"]["epsilon"] == {"federation": pytest.approx(ref)}
  assert summary["privacy"]["epsilon_participants_known"] == {
      "federation": pytest.approx(A.epsilon(A.client_round_event(1.0), taken, 1e-5))}
  assert verify_ledger(os.path.join(work, "ledger.jsonl")).ok
  # The attack: everything published about the run, and every seeded way to draw a sample.
  with open(os.path.join(work, "config.json")) as f:
    published = json.load(f)
  with open(os.path.join(work, "privacy.json")) as f:
    nonce = json.load(f)["run_nonce"]
  seed = published["seed"]
  guesses = {
      "fixed m": [F.sample_clients(clinics, len(s) or 1, seed=seed, round_idx=r)
                  for r, s in enumerate(sample)],
      "seeded poisson": [F.poisson_clients(np.random.default_rng([seed, r, POISSON_STREAM]),
                                           clinics, q, m_max) for r in range(rounds)],
      "seeded secret": [DpKeys("client", nonce, server=DpSecret.reproducible(seed, "server"))
                        .client_sample(clinics, q, m_max, r) for r in range(rounds)],
  }
  actual = [[names.index(n) for n in s] for s in sample]
  for how, guess in guesses.items():
    assert [g.tolist() for g in guess] != actual, how
  server = DpSecret.load(os.path.join(work, "keys", "server"))
  replay = [F.poisson_clients(server.numpy_rng(f"{FEDAVG_SAMPLING}/{nonce}", r), clinics, q,
                              m_max).tolist() for r in range(rounds)]
  assert replay == actual
