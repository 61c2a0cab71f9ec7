"""The client-level DP table: its grid's configs, the round's cost from metrics records, and the
figures and markdown from hand-made summaries."""

import numpy as np
import pytest

from fedlora_jax.run.client_dp_table import (HOSPITALS, NO_DP, client_dp_configs,
                                             client_dp_data, client_dp_markdown, round_cost)
from fedlora_jax.run.configs import load_config_file
from tests.run_fixtures import DEFAULT


def _base(**privacy):
  base = load_config_file(DEFAULT)
  base.data.clinics, base.privacy.client_sampling_rate = 300, 0.05
  base.privacy.adaptive_clipping = privacy.get("adaptive", False)
  return base


def test_grid_cells():
  grid = client_dp_configs(_base(adaptive=True), "/r", 1, epsilons=(2.0,))
  assert list(grid) == [HOSPITALS, NO_DP, "clinics/eps 2"]
  h, none, eps = grid[HOSPITALS], grid[NO_DP], grid["clinics/eps 2"]
  assert (h.data.clinics, h.privacy.client_sampling_rate, h.privacy.level) == (0, 0.0, "none")
  assert (none.data.clinics, none.privacy.client_sampling_rate) == (300, 0.05)
  assert not none.privacy.adaptive_clipping and eps.privacy.adaptive_clipping
  assert (eps.privacy.level, eps.privacy.target_epsilon, eps.privacy.delta) == ("client", 2.0,
                                                                               1e-5)
  assert eps.workdir == "/r/seed1/clinics-eps2" and eps.seed == 1
  with pytest.raises(ValueError, match="needs --config.data.clinics"):
    client_dp_configs(load_config_file(DEFAULT), "/r", 0)


def _record(r, clients, tokens, train_s, round_s, slots=40):
  return {"round": r, "clients": ["x"] * clients, "slots": slots, "tokens": tokens,
          "timing": {"train_and_gate_s": train_s, "round_s": round_s}}


def test_round_cost_skips_the_compiling_round():
  records = [{"round": 0, "clients": []}, _record(1, 30, 9999, 100.0, 120.0),
             _record(2, 20, 1000, 2.0, 3.0), _record(3, 10, 2000, 4.0, 5.0),
             _record(4, 30, 3000, 4.0, 9.0)]
  cost = round_cost(records)
  assert cost == {"clients": 20.0, "slots": 40.0, "s_per_round": 5.0,
                  "tokens_per_s": pytest.approx(6000 / 17.0)}


def _summary(mean, eps=None, known=None):
  s = {"fairness": {"mean": mean, "min": mean - 0.2, "harmonic_mean": mean - 0.1}}
  if eps is not None:
    s["privacy"] = {"noise_multiplier": 1.5, "epsilon": {"federation": eps},
                    "epsilon_participants_known": {"federation": known}}
  return s


def test_data_and_markdown():
  records = {c: [_record(2, 6, 600, 1.0, 1.5)] for c in (HOSPITALS, NO_DP, "clinics/eps 1")}
  summaries = [{HOSPITALS: _summary(0.7), NO_DP: _summary(0.6),
                "clinics/eps 1": _summary(0.3, 1.0, k)} for k in (20.0, 30.0)]
  data = client_dp_data(summaries, [records, records],
                        {HOSPITALS: 6, NO_DP: 20.0, "clinics/eps 1": 20.0})
  row = data["rows"]["clinics/eps 1"]
  assert row["gap_pp"]["mean"] == pytest.approx(-30.0)
  assert (row["epsilon_amplified"], row["epsilon_participants_known"],
          row["epsilon_participants_known_max"]) == (1.0, 25.0, 30.0)
  assert "gap_pp" not in data["rows"][NO_DP] and "noise_multiplier" not in data["rows"][NO_DP]
  assert data["rows"][HOSPITALS]["cost"]["expected_clients"] == 6
  md = client_dp_markdown(data)
  assert "| clinics | eps 1 | 1.500 | 1.00 | 25.0 (max 30.0) | 30.0 ± 0.0 |" in md
  assert "| hospitals | no DP | 6.0 | 6.0 | 40 | 1.50 | 400 |" in md
  assert np.isfinite(data["rows"][HOSPITALS]["gap_pp"]["mean"])
