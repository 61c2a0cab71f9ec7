"""The one-run audit's pieces: canaries are unique random-label questions; identical adapters
score exactly zero; the lower bound sees a perfect membership signal and not a null one, and
matches the one-run bound's closed form when every guess is right; data.extra_train's errors."""

import json

import numpy as np
import pytest
from scipy import stats

from fedlora_jax import data as D
from fedlora_jax.privacy import audit as A
from fedlora_jax.run.setup import SetupError, client_records
from tests.fed_fixtures import tiny_model
from tests.run_fixtures import tiny_config

WORDS = [f"w{i}" for i in range(40)]
LABELS = list(D.CHAPTER_LABELS.values())


def test_canaries_are_unique_random_label_questions():
  c = A.make_canaries(300, WORDS, LABELS, np.random.default_rng(0))
  assert len({r.question for r in c}) == 300
  assert all(len(set(r.options)) == 4 and set(r.options) <= set(LABELS) for r in c)
  counts = np.bincount([r.answer for r in c], minlength=4)
  assert stats.chisquare(counts).pvalue > 0.001  # answers uniform over the four options


def test_identical_adapters_score_zero():
  graphdef, base, lora = tiny_model()
  ids = np.random.default_rng(0).integers(1, 60, (5, 8)).astype(np.int32)
  tok = D.TokenizedMCQ(ids, np.ones_like(ids), np.zeros(ids.shape, np.float32),
                       np.full(5, 6, np.int32), np.zeros(5, np.int32),
                       np.tile(np.arange(4, dtype=np.int32), (5, 1)))
  np.testing.assert_array_equal(A.membership_scores(graphdef, base, lora, lora, tok), 0.0)


def _one_run_bound_all_correct(k: int, significance: float) -> float:
  """With k guesses "in", all right and delta -> 0, Steinke et al.'s test rejects eps whenever
  P[Binomial(k, e^eps / (1 + e^eps)) >= k] <= significance: eps = logit(significance^(1/k))."""
  p = significance ** (1 / k)
  return float(np.log(p / (1 - p)))


def test_lower_bound_sees_a_perfect_signal_and_not_a_null_one():
  rng = np.random.default_rng(1)
  included = rng.random(1000) < 0.5
  perfect = np.where(included, 1.0, 0.0) + 1e-3 * rng.random(1000)
  bound = A.epsilon_lower_bound(perfect, included, significance=0.05, delta=1e-5)
  ceiling = _one_run_bound_all_correct(int(included.sum()), 0.05)
  assert 1.0 < bound <= ceiling + 1e-6  # Bonferroni over thresholds: never above one threshold
  null = A.epsilon_lower_bound(rng.random(1000), included, significance=0.05, delta=1e-5)
  assert null < 0.3
  with pytest.raises(ValueError, match="both in and out"):
    A.epsilon_lower_bound(perfect, np.ones(1000, bool), significance=0.05, delta=1e-5)


def test_extra_train_records_reach_their_hospital_and_bad_files_are_refused(tmp_path):
  rec = {"hospital": "clinic", "question": "w1 w2", "options": ["eye", "ear"], "answer": 1,
         "source": "canary", "id": "c0", "answer_style": "option"}
  good = tmp_path / "extra.jsonl"
  good.write_text(json.dumps(rec) + "\n")
  cfg = tiny_config(str(tmp_path / "w"), str(tmp_path / "cache"))
  names, plain, _, _ = client_records(cfg, {5})
  cfg.data.extra_train = str(good)
  _, extra, _, _ = client_records(cfg, {5})
  assert names[5] == "clinic" and extra[5][-1].id == "c0" and len(extra[5]) == len(plain[5]) + 1
  (tmp_path / "bad.jsonl").write_text('{"hospital": "clinic", "question": 1}\n')
  cfg.data.extra_train = str(tmp_path / "bad.jsonl")
  with pytest.raises(D.DataError, match="bad.jsonl: record 0: malformed question"):
    client_records(cfg, {5})
  (tmp_path / "who.jsonl").write_text(json.dumps({**rec, "hospital": "nowhere"}) + "\n")
  cfg.data.extra_train = str(tmp_path / "who.jsonl")
  with pytest.raises(SetupError, match=r"names hospitals \['nowhere'\]"):
    client_records(cfg, {5})
