"""compare.py end to end on the tiny config: two seeds, both protocols, per-question correctness
that reproduces each run's matrix, and the bootstrap intervals."""

import json
import os

import numpy as np
import pytest

from fedlora_jax.run.compare import compare
from tests.run_fixtures import tiny_config


@pytest.mark.slow
def test_compare_over_two_seeds_writes_both_protocols(tmp_path):
  root = str(tmp_path / "cmp")
  base = tiny_config(str(tmp_path / "unused"), str(tmp_path / "cache"),
                     **{"ledger.enabled": False, "fed.rounds": 1})
  md = compare(base, ["local", "fedavg", "centralized"], root, seeds=[0, 1], draws=100)
  data = json.load(open(os.path.join(root, "compare.json")))
  assert data["seeds"] == [0, 1]
  for p in ("cross_client", "own_test"):
    d = data["protocols"][p]
    assert set(d["gaps_pp_vs_local"]) == {"fedavg", "centralized"}
    assert set(d["bootstrap_ci95_pp"]["fedavg"]) == {"mean", "min", "harmonic_mean"}
    per_seed = [s["rows"]["fedavg"]["mean"] for s in d["per_seed"]]
    assert d["rows"]["fedavg"]["mean"] == pytest.approx(np.mean(per_seed))
  assert "local (best specialist)" in data["protocols"]["cross_client"]["rows"]
  assert "Cross-client protocol" in md and "Own-test protocol" in md
  for seed in (0, 1):
    for v in ("local", "fedavg"):
      run_dir = os.path.join(root, f"seed{seed}", v)
      summary = json.load(open(os.path.join(run_dir, "summary.json")))
      with np.load(os.path.join(run_dir, "correct.npz")) as z:
        means = np.stack([z[n].mean(axis=1) for n in summary["accuracy"]], axis=1)
      np.testing.assert_allclose(means, summary["matrix"])
      assert json.load(open(os.path.join(run_dir, "config.json")))["seed"] == seed
