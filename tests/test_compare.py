"""The comparison's two protocols on a hand-made 3x3 matrix, seed aggregation, the paired
bootstrap, and the centralized baseline's budget."""

import numpy as np
import pytest

from fedlora_jax import data as D
from fedlora_jax.eval.protocols import score
from fedlora_jax.run.compare import aggregate_seeds, bootstrap_gaps, compare_table
from fedlora_jax.run.setup import ClientData, local_steps
from tests.run_fixtures import tiny_config

NAMES = ["a", "b", "c"]
LOCAL = [[0.9, 0.3, 0.6],   # specialist trained at a: mean 0.6,  min 0.3, hmean 3 / (10/9 + 10/3 + 5/3)
         [0.2, 0.8, 0.4],   # at b: mean 1.4/3, min 0.2, hmean 3 / (5 + 5/4 + 5/2) = 12/35
         [0.5, 0.5, 0.7]]   # at c: mean 1.7/3, min 0.5, hmean 3 / (2 + 2 + 10/7) = 21/38
FEDAVG = [[0.6, 0.5, 0.7]]  # mean 0.6, min 0.5, hmean 3 / (5/3 + 2 + 10/7) = 63/107


def _summary(matrix):
  m = np.asarray(matrix)
  return {"accuracy": dict(zip(NAMES, np.diag(m) if len(m) > 1 else m[0])), "matrix": matrix}


def test_compare_table_on_a_hand_made_matrix_for_both_protocols():
  md, data = compare_table({"local": _summary(LOCAL), "fedavg": _summary(FEDAVG)})
  cross, own = data["protocols"]["cross_client"], data["protocols"]["own_test"]
  h = [3 / (10 / 9 + 10 / 3 + 5 / 3), 12 / 35, 21 / 38]
  local_cross = {"mean": (0.6 + 1.4 / 3 + 1.7 / 3) / 3, "min": (0.3 + 0.2 + 0.5) / 3,
                 "harmonic_mean": sum(h) / 3}
  fedavg = {"mean": 0.6, "min": 0.5, "harmonic_mean": 63 / 107}
  for k in local_cross:
    assert cross["rows"]["local"][k] == pytest.approx(local_cross[k])
    assert cross["rows"]["fedavg"][k] == pytest.approx(fedavg[k])
    assert own["rows"]["fedavg"][k] == pytest.approx(fedavg[k])
    assert cross["gaps_pp_vs_local"]["fedavg"][k] == pytest.approx(
        100 * (fedavg[k] - local_cross[k]))
  # The best specialist (highest mean over all test sets) is the one trained at a.
  best = cross["rows"]["local (best specialist)"]
  assert (best["mean"], best["min"]) == pytest.approx((0.6, 0.3))
  assert best["harmonic_mean"] == pytest.approx(h[0])
  assert cross["rows"]["local"]["per_client"] == pytest.approx({"a": 1.6 / 3, "b": 1.6 / 3,
                                                                "c": 1.7 / 3})
  # Own-test: each specialist on its own hospital's test set: the diagonal 0.9, 0.8, 0.7.
  own_local = {"mean": 0.8, "min": 0.7, "harmonic_mean": 3 / (10 / 9 + 10 / 8 + 10 / 7)}
  for k, v in own_local.items():
    assert own["rows"]["local"][k] == pytest.approx(v)
    assert own["gaps_pp_vs_local"]["fedavg"][k] == pytest.approx(100 * (fedavg[k] - v))
  assert "local (best specialist)" not in own["rows"]
  assert set(cross["gaps_pp_vs_local"]) == {"fedavg"}
  assert "| local (best specialist) | 90.0 | 30.0 | 60.0 | 60.0 | 30.0 | 49.1 |" in md
  assert "| fedavg | +5.6 | +16.7 | +12.7 |" in md


def test_score_rejects_a_matrix_of_the_wrong_shape_and_hmean_of_zero():
  with pytest.raises(ValueError, match="1 shared model or one model per test set"):
    score(np.ones((2, 3)), "cross_client")
  with pytest.raises(ValueError, match="unknown protocol"):
    score(np.ones((1, 3)), "pooled")
  assert float(score([[0.0, 0.5, 1.0]], "own_test")["harmonic_mean"]) == 0.0


def test_aggregate_seeds_mean_and_std():
  runs = [compare_table({"local": _summary(LOCAL), "fedavg": _summary(m)})[1]
          for m in ([[0.6, 0.5, 0.7]], [[0.7, 0.5, 0.9]])]
  agg = aggregate_seeds(runs)["protocols"]["cross_client"]
  assert agg["rows"]["fedavg"]["mean"] == pytest.approx(0.65)  # 0.6 and 0.7
  assert agg["std"]["rows"]["fedavg"]["mean"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
  assert agg["std"]["rows"]["local"]["min"] == 0.0
  assert agg["rows"]["fedavg"]["per_client"]["a"] == pytest.approx(0.65)
  assert agg["gaps_pp_vs_local"]["fedavg"]["min"] == pytest.approx(100 * (0.5 - 1 / 3))
  assert len(agg["per_seed"]) == 2


def test_paired_bootstrap_of_the_gaps():
  rng = np.random.default_rng(0)
  same = {t: rng.random((1, 40)) < 0.5 for t in NAMES}
  runs = {"local": {t: np.repeat(same[t], 3, axis=0) for t in NAMES}, "fedavg": same}
  ci = bootstrap_gaps([runs], "cross_client", draws=200)
  for k in ("mean", "min", "harmonic_mean"):
    np.testing.assert_allclose(ci["fedavg"][k], [0.0, 0.0], atol=1e-9)
  # FedAvg right on every question, the specialists on half: the gap is +50 pp whatever the draw
  # for the mean; the interval of the worst client sits well above 0.
  half = {t: np.repeat((np.arange(40) % 2 == 0)[None], 3, axis=0) for t in NAMES}
  runs = {"local": half, "fedavg": {t: np.ones((1, 40), bool) for t in NAMES}}
  for protocol in ("cross_client", "own_test"):
    ci = bootstrap_gaps([runs, runs], protocol, draws=500)
    lo, hi = ci["fedavg"]["min"]
    assert 20 < lo <= hi < 80
    assert lo < 50 + 1e-9 and ci["fedavg"]["mean"][1] > 50 - 1e-9
  with pytest.raises(ValueError, match=r"the baseline \('local'\) runs"):
    bootstrap_gaps([{"fedavg": same}], "own_test")


def test_centralized_client_takes_the_federations_steps_per_round(tmp_path):
  cfg = tiny_config(str(tmp_path / "w"), str(tmp_path / "c"))
  rows = lambda n: D.TokenizedMCQ(np.zeros((n, 8), np.int32), np.ones((n, 8), np.int32),
                                  np.zeros((n, 8), np.float32), np.zeros(n, np.int32),
                                  np.zeros(n, np.int32), np.tile(np.arange(4, dtype=np.int32),
                                                                 (n, 1)))
  hospitals = [rows(5), rows(7), rows(9)]
  held = dict(enumerate(hospitals))
  fed = ClientData(NAMES, held, NAMES, held, [], [5, 7, 9], 1)
  pooled = ClientData(["pooled"], {0: D.pooled(hospitals)}, NAMES, held, [], [21], 1)
  k, b = cfg.fed.local_steps, cfg.fed.batch_size
  assert local_steps(cfg, fed) == k
  cfg.fed.centralized = True
  assert local_steps(cfg, pooled) == 3 * k
  fed_batches, _ = D.round_batches(hospitals, local_steps=k, batch_size=b, seed=0, round_idx=0)
  pooled_batches, _ = D.round_batches(pooled.train, local_steps=local_steps(cfg, pooled),
                                      batch_size=b, seed=0, round_idx=0)
  assert fed_batches["input_ids"].shape == (3, k, b, 8)
  assert pooled_batches["input_ids"].shape == (1, 3 * k, b, 8)  # as many examples per round
  cfg.fed.clients_per_round = 2  # partial participation: the steps of 2 hospitals
  assert local_steps(cfg, pooled) == 2 * k


def test_a_run_recorded_before_an_added_field_is_reused_at_its_old_value():
  """config.json written before data.scale existed: the same run as data.scale=1 (finished
  runs are read back, a resume is allowed), another run than data.scale=2."""
  from fedlora_jax.run.workdir import config_differences
  old = {"seed": 0, "fed.rounds": 20}
  assert config_differences(old, {**old, "data.scale": 1}) == []
  assert config_differences(old, {**old, "data.scale": 2}) == ["data.scale"]
  assert config_differences({**old, "data.scale": 2}, {**old, "data.scale": 1}) == ["data.scale"]
