"""report.md's privacy section, from a hand-made metrics file."""

import json
import os

from fedlora_jax.run.report import write_report

HOSPITALS = ("north", "south")


def _summary(names=HOSPITALS) -> dict:
  return {"algorithm": "fedavg", "centralized": False, "rounds": 3,
          "clients": [{"client": n, "train": 10, "test": 4, "dominant": "1",
                       "dominant_share": 0.5} for n in names],
          "accuracy": {n: 0.5 for n in names}, "accuracy_all_tests": {n: 0.5 for n in names},
          "fairness": {"mean": 0.5, "min": 0.5, "harmonic_mean": 0.5, "std": 0.0},
          "matrix": [[0.5] * len(names)], "matrix_rows": ["global"],
          "adapter": "/w/adapter/adapter_model.safetensors"}


def _write(workdir, records) -> str:
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  return workdir


def _record(r: int, privacy: dict | None) -> dict:
  rec = {"round": r, "clients": list(HOSPITALS), "loss": [1.0, 1.0],
         "accuracy": {n: 0.5 for n in HOSPITALS},
         "summary": {"mean": 0.5, "min": 0.5, "harmonic_mean": 0.5}}
  return rec if privacy is None else {**rec, "privacy": privacy}


def _example(eps: dict) -> dict:
  return {"level": "example", "delta": 1e-5, "noise_multiplier": 1.25, "clip_norm": 1.0,
          "accountant": "pld", "epsilon": eps}


def test_example_level_privacy_section(tmp_path):
  records = [_record(0, None), _record(1, _example({"north": 0.41, "south": 0.93})),
             _record(2, _example({"north": 0.6, "south": 1.37})),
             _record(3, _example({"north": 0.77, "south": 1.75}))]
  text = open(write_report(_write(str(tmp_path), records), _summary())).read()
  assert ("Example-level differential privacy: **epsilon = 1.75 at delta = 1e-05** after round 3 "
          "(unit protected: one training record in a hospital's training data (a patient with k "
          "records is protected at up to k times this epsilon); noise multiplier "
          "1.25, clip norm 1, dp-accounting pld accountant).") in text
  assert "Epsilon per hospital: north 0.77, south 1.75" in text
  assert "| round | 1 | 2 | 3 |\n|---|---|---|---|\n| epsilon | 0.93 | 1.37 | 1.75 |" in text
  assert os.path.getsize(tmp_path / "epsilon_per_round.png") > 0


def test_client_level_in_a_small_federation_says_the_guarantee_is_weak(tmp_path):
  priv = {"level": "client", "delta": 1e-5, "noise_multiplier": 0.5, "clip_norm": 0.07,
          "accountant": "pld", "epsilon": {"federation": 41.2}}
  text = open(write_report(_write(str(tmp_path), [_record(1, priv)]), _summary())).read()
  assert "Client-level differential privacy: **epsilon = 41.2 at delta = 1e-05**" in text
  assert "one whole hospital's participation" in text and "clip norm 0.07" in text
  assert "With 2 hospitals this guarantee is weak" in text


def test_no_privacy_section_without_dp(tmp_path):
  text = open(write_report(_write(str(tmp_path), [_record(0, None), _record(1, None)]),
                           _summary())).read()
  assert "## Privacy" not in text and not os.path.exists(tmp_path / "epsilon_per_round.png")
