"""End to end with example-level DP-SGD: every round's metrics record each hospital's epsilon
(equal to the accountant's value for its rounds) and the round's ledger block the largest of
them; a budget stops the run after checkpointing the last round within it, and a resume never
starts a round past it; two runs of one config add different noise; a run interrupted and
resumed with the same secrets equals its uninterrupted twin; no artifact holds a secret."""

import json
import os
import shutil

import numpy as np
import pytest

from fedlora_jax.ledger import verify_ledger
from fedlora_jax.privacy import accounting as A
from fedlora_jax.privacy.secret import DpSecret
from fedlora_jax.run.dp_keys import SGD_NOISE
from fedlora_jax.run import experiment
from tests.run_fixtures import tiny_config

DP = {"privacy.level": "example", "privacy.noise_multiplier": 1.0, "privacy.clip_norm": 1.0,
      "ledger.enabled": False}


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_dp_run_reports_epsilon_and_stops_at_the_budget(tmp_path):
  cache = str(tmp_path / "cache")
  run1 = str(tmp_path / "run1")
  experiment.run(tiny_config(run1, cache, **{**DP, "ledger.enabled": True}))
  recs = [r for r in _records(run1) if r["round"] > 0]
  assert [r["round"] for r in recs] == [1, 2]
  eps1, eps2 = recs[0]["privacy"]["epsilon"], recs[1]["privacy"]["epsilon"]
  assert set(eps1) == set(recs[0]["clients"]) and all(eps2[h] > eps1[h] > 0 for h in eps1)
  # Each round's block records the largest epsilon so far, as metrics.jsonl does.
  ledger = os.path.join(run1, "ledger.jsonl")
  with open(ledger) as f:
    lines = f.readlines()
  spent = [b["privacy"] for b in map(json.loads, lines) if b["kind"] == "round"]
  assert spent == [{"unit": "example", "epsilon": max(r["privacy"]["epsilon"].values()),
                    "delta": 1e-5, "noise_multiplier": 1.0, "clip": 1.0, "accountant": "pld"}
                   for r in recs]
  assert 0 < spent[0]["epsilon"] < spent[1]["epsilon"]
  assert verify_ledger(ledger).privacy == spent[1]
  with open(ledger, "w") as f:  # a tampered epsilon fails verification at its block
    f.writelines(lines[:2] + [lines[2].replace(repr(spent[1]["epsilon"]),
                                               repr(spent[1]["epsilon"] / 2))])
  assert verify_ledger(ledger)[:2] == (False, 2)
  # Hospital sizes from the run itself; the accountant called directly agrees.
  h = recs[0]["clients"][0]
  sizes = json.load(open(os.path.join(run1, "summary.json")))["clients"]
  n = {s["client"]: s["train"] for s in sizes}
  b_max = A.poisson_max_batch(list(n.values()), 4)
  direct = A.epsilon(A.example_step_event(n[h], 4, b_max, 1.0), 2 * 2, 1e-5)
  np.testing.assert_allclose(eps2[h], direct, rtol=1e-12)

  run2 = str(tmp_path / "run2")
  budget = max(eps1.values()) * 1.01  # room for round 1 only
  experiment.run(tiny_config(run2, cache, **DP, **{"privacy.target_epsilon": budget,
                                                   "fed.rounds": 3}))
  assert [r["round"] for r in _records(run2) if r["round"] > 0] == [1]
  # Resumed (even with more rounds), the budget-stopped run starts no round past the budget.
  experiment.run(tiny_config(run2, cache, **DP, **{"privacy.target_epsilon": budget,
                                                   "fed.rounds": 5}))
  assert [r["round"] for r in _records(run2) if r["round"] > 0] == [1]
  assert os.listdir(os.path.join(run2, "checkpoints")) == ["1"]


@pytest.mark.slow
def test_attacked_run_behind_a_robust_rule_records_the_attackers_signed_update(tmp_path):
  """The attacker's (scaled) update is signed and attested like any other; the median keeps the
  adapter finite and the run's ledger verifies."""
  workdir = str(tmp_path / "run")
  summary = experiment.run(tiny_config(workdir, str(tmp_path / "cache"), **{
      "attack.kind": "scale", "attack.clients": "1", "attack.scale": 100.0,
      "fed.robust_rule": "median"}))
  recs = [r for r in _records(workdir) if r["round"] > 0]
  assert all(r["ledger"]["accepted"] == len(r["clients"]) for r in recs)
  assert summary["ledger"]["valid"] and np.isfinite(summary["fairness"]["mean"])


def _adapter_bytes(workdir):
  with open(os.path.join(workdir, "adapter", "adapter_model.safetensors"), "rb") as f:
    return f.read()


def _files(workdir, skip):
  for root, _, names in os.walk(workdir):
    if os.path.relpath(root, workdir).split(os.sep)[0] in skip:
      continue
    for n in names:
      with open(os.path.join(root, n), "rb") as f:
        yield os.path.join(root, n), f.read()


@pytest.mark.slow
def test_secret_noise_runs_differ_resume_exactly_and_leave_no_secret(tmp_path):
  cache = str(tmp_path / "cache")
  keys = str(tmp_path / "keystores")  # one keystore for both runs, as an enrolled hospital has
  a, b, c = (str(tmp_path / n) for n in ("a", "b", "c"))
  experiment.run(tiny_config(a, cache, **DP, **{"ledger.keystores": keys}))
  experiment.run(tiny_config(b, cache, **DP, **{"ledger.keystores": keys}))
  assert _adapter_bytes(a) != _adapter_bytes(b)  # same config and keystore: other noise
  # Interrupted after round 1: a's workdir without its round-2 checkpoint and outputs, resumed.
  shutil.copytree(a, c)
  for gone in ("checkpoints/2", "adapter", "summary.json"):
    shutil.rmtree(os.path.join(c, gone)) if os.path.isdir(os.path.join(c, gone)) else \
        os.remove(os.path.join(c, gone))
  experiment.run(tiny_config(c, cache, **DP, **{"ledger.keystores": keys}))
  assert _adapter_bytes(a) == _adapter_bytes(c)
  keep = ("round", "clients", "loss", "weights", "privacy", "accuracy")
  strip = lambda rs: [{k: r.get(k) for k in keep} for r in rs]
  assert strip(_records(a)) == strip(_records(c))
  # A resume whose secret is gone is refused (re-run rounds would get other noise, unaccounted).
  os.remove(os.path.join(keys, "clinic", "dp_secret"))
  shutil.rmtree(os.path.join(c, "checkpoints", "2"))
  with pytest.raises(ValueError, match="dp_secret is missing"):
    experiment.run(tiny_config(c, cache, **DP, **{"ledger.keystores": keys}))
  # No artifact of run a holds a hospital's secret or a noise key derived from it.
  nonce = json.load(open(os.path.join(a, "privacy.json")))["run_nonce"]
  needles = []
  for name in os.listdir(keys):
    path = os.path.join(keys, name)
    if name == "clinic" or not os.path.exists(os.path.join(path, "dp_secret")):
      continue
    with open(os.path.join(path, "dp_secret"), "rb") as f:
      needles.append(f.read().strip())
    secret = DpSecret.load(path)
    for r in range(2):
      key = secret.jax_key(f"{SGD_NOISE}/{nonce}", r)
      needles += [key.astype("<u4").tobytes(), key.astype(">u4").tobytes()]
  assert len(needles) == 5 * 5  # five hospitals left: the secret, two rounds x two encodings
  for path, data in _files(a, skip=set()):
    for needle in needles:
      assert needle not in data, (path, needle)


@pytest.mark.slow
def test_client_level_run_uses_the_servers_secret_and_reports_the_federation_epsilon(tmp_path):
  cache = str(tmp_path / "cache")
  client = {"privacy.level": "client", "privacy.noise_multiplier": 0.5,
            "privacy.adaptive_clipping": True, "privacy.clip_norm": 0.1, "ledger.enabled": False}
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  summary = experiment.run(tiny_config(a, cache, **client))
  experiment.run(tiny_config(b, cache, **client))
  assert os.path.exists(os.path.join(a, "keys", "server", "dp_secret"))
  assert _adapter_bytes(a) != _adapter_bytes(b)
  direct = A.epsilon(A.client_round_event(0.5), 2, 1e-5)
  assert summary["privacy"]["epsilon"] == {"federation": direct}
  assert summary["privacy"]["unit"] == "client-level (one hospital)"
