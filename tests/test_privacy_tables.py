"""The attack and privacy-utility tables: the grids' configs and the markdown built from
summaries (hand-made numbers)."""

import pytest

from fedlora_jax.federated.robust import RULES
from fedlora_jax.run.configs import load_config_file
from fedlora_jax.run.safeguard_tables import (ATTACKS, attack_configs, attack_table,
                                              privacy_configs, privacy_table, safeguard_table)
from tests.run_fixtures import DEFAULT


def _summary(mean, worst, hmean):
  return {"fairness": {"mean": mean, "min": worst, "harmonic_mean": hmean}}


def test_grids():
  base = load_config_file(DEFAULT)
  att = attack_configs(base, "/r")
  assert len(att) == len(RULES) * len(ATTACKS)
  cfg = att[("krum", "scale")]
  assert (cfg.fed.robust_rule, cfg.attack.kind, cfg.attack.clients) == ("krum", "scale", "1")
  assert att[("median", "none")].attack.clients == ""
  assert cfg.workdir == "/r/attack/krum-scale" and base.fed.robust_rule == "mean"
  priv = privacy_configs(base, "/r")
  assert list(priv) == ["no DP", "eps 1", "eps 3", "eps 8"]
  assert (priv["eps 3"].privacy.level, priv["eps 3"].privacy.target_epsilon) == ("example", 3.0)


def test_tables_from_summaries():
  table = attack_table({("mean", "sign_flip"): _summary(0.2, 0.05, 0.1),
                        ("median", "sign_flip"): _summary(0.61, 0.4, 0.55)})
  assert "| mean | sign_flip | 20.0 | 5.0 | 10.0 |" in table
  assert "| median | sign_flip | 61.0 | 40.0 | 55.0 |" in table
  table = privacy_table({"no DP": (_summary(0.7, 0.5, 0.6), None),
                         "eps 1": (_summary(0.3, 0.2, 0.25), {
                             "noise_multiplier": 2.5, "epsilon": {"a": 0.7, "b": 0.98}})})
  assert "| no DP | - | - | 70.0 | 50.0 | 60.0 |" in table
  assert "| eps 1 | 2.500 | 0.98 | 30.0 | 20.0 | 25.0 |" in table
  with pytest.raises(ValueError, match="unknown table"):
    safeguard_table(load_config_file(DEFAULT), "speed", "/tmp/x")


def test_a_part_of_the_attack_grid():
  base = load_config_file(DEFAULT)
  att = attack_configs(base, "/r", rules=("mean", "krum"), attacks=("none", "gaussian"))
  assert list(att) == [("mean", "none"), ("mean", "gaussian"), ("krum", "none"),
                       ("krum", "gaussian")]
  with pytest.raises(ValueError, match=r"unknown rules or attacks \['bulyan', 'flood'\]"):
    attack_configs(base, "/r", rules=("mean", "bulyan"), attacks=("flood",))
