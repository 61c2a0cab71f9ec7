"""The attack and privacy-utility tables over seeds: the grids' configs, and the figures and
markdown built from hand-made summaries and per-question correctness."""

import numpy as np
import pytest

from fedlora_jax.federated.robust import RULES
from fedlora_jax.run.configs import load_config_file
from fedlora_jax.run.safeguard_tables import (ATTACKS, attack_configs, attack_data,
                                              attack_markdown, privacy_configs, privacy_data,
                                              privacy_markdown, safeguard_table)
from tests.run_fixtures import DEFAULT

NAMES = ("a", "b")


def _summary(mean, worst, hmean, acc=(0.5, 0.5)):
  return {"fairness": {"mean": mean, "min": worst, "harmonic_mean": hmean},
          "accuracy": dict(zip(NAMES, acc))}


def test_attack_grid_strengths_and_seeds():
  base = load_config_file(DEFAULT)
  att = attack_configs(base, "/r", seed=2)
  assert len(att) == len(RULES) * len(ATTACKS)
  flip, gauss = att["krum/sign_flip"], att["median/gaussian"]
  assert (flip.fed.robust_rule, flip.attack.kind, flip.attack.clients, flip.attack.scale) == (
      "krum", "sign_flip", "1", 4.0)
  assert (gauss.attack.clients, att["mean/alie"].attack.clients) == ("2", "2")
  assert (att["median/none"].attack.clients, att["median/none"].attack.kind) == ("", "none")
  # the seed varies training; the benchmark split and the tiny base stay the base config's
  assert (flip.seed, flip.data.seed) == (2, base.seed)
  assert flip.workdir == "/r/attack/seed2/krum-sign_flip" and base.fed.robust_rule == "mean"
  part = attack_configs(base, "/r", 0, rules=("mean", "krum"), attacks=("none", "gaussian"))
  assert list(part) == ["mean/none", "mean/gaussian", "krum/none", "krum/gaussian"]
  with pytest.raises(ValueError, match=r"unknown rules or attacks \['bulyan', 'flood'\]"):
    attack_configs(base, "/r", 0, rules=("mean", "bulyan"), attacks=("flood",))


def test_privacy_grid_lora_and_ffa_lora():
  base = load_config_file(DEFAULT)
  priv = privacy_configs(base, "/r", seed=1, epsilons=(1.0, 8.0))
  assert list(priv) == ["fedavg/no DP", "fedavg/eps 1", "fedavg/eps 8", "ffa_lora/no DP",
                        "ffa_lora/eps 1", "ffa_lora/eps 8"]
  cell = priv["ffa_lora/eps 8"]
  assert (cell.fed.algorithm, cell.privacy.level, cell.privacy.target_epsilon) == (
      "ffa_lora", "example", 8.0)
  assert cell.workdir == "/r/privacy/seed1/ffa_lora-eps8"
  assert priv["fedavg/no DP"].privacy.level == "none"
  with pytest.raises(ValueError, match="target epsilon 0 must be > 0"):
    privacy_configs(base, "/r", 0, epsilons=(0.0,))


def test_attack_figures_over_seeds():
  seeds = [{"mean/none": _summary(0.7, 0.5, 0.6, (0.8, 0.6)),
            "mean/scale": _summary(0.2, 0.1, 0.15, (0.2, 0.5))},
           {"mean/none": _summary(0.6, 0.4, 0.5, (0.7, 0.5)),
            "mean/scale": _summary(0.3, 0.2, 0.25, (0.3, 0.5))}]
  data = attack_data(seeds)
  row = data["rows"]["mean/scale"]
  assert row["mean"] == pytest.approx(0.25) and row["std"]["mean"] == pytest.approx(0.0707107)
  assert row["gap_pp"]["min"] == pytest.approx(-30.0)
  assert row["largest_drop"] == {"hospital": "a", "pp": pytest.approx(50.0)}
  assert "gap_pp" not in data["rows"]["mean/none"]
  md = attack_markdown(data)
  assert "| mean | scale | 25.0 ± 7.1 | 15.0 ± 7.1 | 20.0 ± 7.1 | -40.0 | -30.0 | -35.0 | a -50.0 |" \
      in md
  assert "| mean | none | 65.0 ± 7.1 | 45.0 ± 7.1 | 55.0 ± 7.1 | - | - | - | - |" in md


def test_attack_bootstrap_interval_against_clean_fedavg():
  """Paired over questions: a cell that answers exactly as clean FedAvg has the interval [0, 0];
  one that gets every question of test set b wrong has a worst-client gap equal to minus b's
  clean accuracy in every draw, below 0."""
  rng = np.random.default_rng(0)
  clean = {t: rng.random((1, 40)) < 0.7 for t in NAMES}
  broken = {"a": clean["a"], "b": np.zeros((1, 40), bool)}
  summaries = [{"mean/none": _summary(0.7, 0.6, 0.65), "median/none": _summary(0.7, 0.6, 0.65),
                "mean/sign_flip": _summary(0.3, 0.0, 0.0)}]
  correct = [{"mean/none": clean, "median/none": dict(clean), "mean/sign_flip": broken}]
  rows = attack_data(summaries, correct, draws=200)["rows"]
  assert rows["median/none"]["ci95_pp"] == {k: [0.0, 0.0] for k in ("mean", "min",
                                                                     "harmonic_mean")}
  lo, hi = rows["mean/sign_flip"]["ci95_pp"]["min"]
  assert -100 <= lo < hi < 0
  assert rows["mean/sign_flip"]["ci95_pp"]["harmonic_mean"][1] < 0  # a zero accuracy: hmean 0


def test_per_hospital_noise_cells_share_the_no_dp_run():
  base = load_config_file(DEFAULT)
  priv = privacy_configs(base, "/r", seed=0, methods=("fedavg", "fedavg+per_client"),
                         epsilons=(2.0,))
  cell = priv["fedavg+per_client/eps 2"]
  assert (cell.fed.algorithm, cell.privacy.calibration) == ("fedavg", "per_client")
  assert cell.workdir == "/r/privacy/seed0/fedavg+per_client-eps2"
  assert priv["fedavg/eps 2"].privacy.calibration == "shared"
  # the no-DP cell is the algorithm's own run, read back rather than trained twice
  assert priv["fedavg+per_client/no DP"].workdir == priv["fedavg/no DP"].workdir
  spent = {"noise_multiplier": [0.9, 4.7], "epsilon": {"a": 2.0, "b": 2.0}}
  md = privacy_markdown(privacy_data([{"fedavg+per_client/eps 2": (_summary(0.5, 0.3, 0.4),
                                                                    spent)}]))
  assert "| fedavg+per_client | eps 2 | 0.900-4.700 | 2.00 | 50.0 | 30.0 | 40.0 |" in md


def test_privacy_figures_over_seeds():
  priv = {"noise_multiplier": 2.5, "epsilon": {"a": 0.7, "b": 0.98}}
  seeds = [{"fedavg/no DP": (_summary(0.7, 0.5, 0.6), None),
            "fedavg/eps 1": (_summary(0.3, 0.2, 0.25), priv)},
           {"fedavg/no DP": (_summary(0.7, 0.5, 0.6), None),
            "fedavg/eps 1": (_summary(0.4, 0.3, 0.35), {**priv, "noise_multiplier": 3.5})}]
  md = privacy_markdown(privacy_data(seeds))
  assert "| fedavg | no DP | - | - | 70.0 ± 0.0 | 50.0 ± 0.0 | 60.0 ± 0.0 |" in md
  assert "| fedavg | eps 1 | 3.000 | 0.98 | 35.0 ± 7.1 | 25.0 ± 7.1 | 30.0 ± 7.1 |" in md
  with pytest.raises(ValueError, match="unknown table"):
    safeguard_table(load_config_file(DEFAULT), "speed", "/tmp/x")


def test_audited_cells_show_claim_and_lower_bound(tmp_path):
  from fedlora_jax.run.report import plot_privacy_curve
  priv = {"noise_multiplier": 1.2, "epsilon": {"a": 7.9, "b": 8.0}}
  seeds = [{"ffa_lora/no DP": (_summary(0.7, 0.5, 0.6), None),
            "ffa_lora/eps 8": (_summary(0.5, 0.3, 0.4), priv)}]
  audits = {"ffa_lora/no DP": {"hospital": "b", "claimed_epsilon": None,
                               "epsilon_lower_bound": 2.3, "canaries": 100},
            "ffa_lora/eps 8": {"hospital": "b", "claimed_epsilon": 8.0,
                               "epsilon_lower_bound": 0.0, "canaries": 100}}
  data = privacy_data(seeds, audits)
  md = privacy_markdown(data)
  assert "| ffa_lora | no DP | - | - | 70.0 | 50.0 | 60.0 | b: none / 2.30 |" in md
  assert "| ffa_lora | eps 8 | 1.200 | 8.00 | 50.0 | 30.0 | 40.0 | b: 8.00 / 0.00 |" in md
  plot_privacy_curve(data, str(tmp_path / "curve.png"))
  assert (tmp_path / "curve.png").stat().st_size > 0


def test_finished_only_tabulates_complete_seeds_and_runs_nothing(tmp_path):
  base = load_config_file(DEFAULT)
  with pytest.raises(ValueError, match=r"no seed of \[0, 1\] has every attack cell finished"):
    safeguard_table(base, "attack", str(tmp_path), seeds=(0, 1), rules=("mean",),
                    attacks=("none",), finished_only=True)
  assert not (tmp_path / "attack").exists()
  # seed 0 finished (its run directories written by hand), seed 1 not: the table is seed 0's
  import json
  import os
  from fedlora_jax.run.workdir import flat_config
  for cell, cfg in attack_configs(base, str(tmp_path), 0, ("mean",), ("none", "scale")).items():
    os.makedirs(cfg.workdir)
    json.dump(flat_config(cfg), open(os.path.join(cfg.workdir, "config.json"), "w"))
    acc = (0.8, 0.6) if cell == "mean/none" else (0.3, 0.5)
    json.dump(_summary(np.mean(acc), min(acc), 2 / sum(1 / a for a in acc), acc),
              open(os.path.join(cfg.workdir, "summary.json"), "w"))
    np.savez(os.path.join(cfg.workdir, "correct.npz"),
             **{t: np.arange(10)[None] < 10 * a for t, a in zip(NAMES, acc)})
  md = safeguard_table(base, "attack", str(tmp_path), seeds=(0, 1), rules=("mean",),
                       attacks=("none", "scale"), finished_only=True, draws=50)
  assert "seeds 0\n" in md and "| mean | scale | 40.0 | 30.0 | 37.5 | -30.0 [" in md
