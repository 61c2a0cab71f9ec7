"""A run killed with SIGKILL mid-training and resumed ends exactly like an uninterrupted one;
the train script rejects bad input with a clear message and a non-zero exit."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fedlora_jax import ledger as L
from fedlora_jax.run import experiment
from fedlora_jax.run.gates import LedgerGate
from tests.run_fixtures import ROOT, TINY_OVERRIDES, cli_flags, tiny_config

TRAIN = os.path.join(ROOT, "scripts", "train.py")


def _train_cmd(workdir, cache_dir, **overrides):
  flags = cli_flags({**TINY_OVERRIDES, "fed.rounds": 3, **overrides})
  return [sys.executable, TRAIN, "--config=" + os.path.join(ROOT, "configs", "default.py"),
          f"--config.workdir={workdir}", f"--config.cache_dir={cache_dir}", *flags]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
  return env


def _records(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow  # three full runs, one killed, ~1 min
def test_sigkill_mid_training_then_resume_equals_uninterrupted(tmp_path):
  cache = str(tmp_path / "cache")
  reference = experiment.run(tiny_config(str(tmp_path / "ref"), cache, **{"fed.rounds": 3}))
  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(_train_cmd(workdir, cache), env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not any(r["round"] == 1 for r in _records(workdir)):  # checkpoint 1 is on disk
    assert proc.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert max(r["round"] for r in _records(workdir)) < 3
  done = subprocess.run(_train_cmd(workdir, cache), env=_env(), capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  ref = _records(str(tmp_path / "ref"))
  got = _records(workdir)
  assert [r["round"] for r in got] == [0, 1, 2, 3]
  for a, b in zip(ref, got):
    assert a["loss"] == b["loss"] and a["accuracy"] == b["accuracy"], a["round"]
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["accuracy"] == reference["accuracy"]
  assert summary["ledger"]["valid"] and summary["ledger"]["blocks"] == 5  # genesis, 3 rounds, close
  # Same config and seed, two runs: every party has a different key, each ledger its own nonce.
  geneses = [json.loads(open(os.path.join(w, "ledger.jsonl")).readline())
             for w in (str(tmp_path / "ref"), workdir)]
  keys = [{r["name"]: r["pk"] for r in [g["server"], *g["registrations"]]} for g in geneses]
  assert keys[0].keys() == keys[1].keys() and len(keys[0]) == 7
  assert all(keys[0][n] != keys[1][n] for n in keys[0])
  assert geneses[0]["nonce"] != geneses[1]["nonce"]
  assert summary["ledger"]["genesis_hash"] == geneses[1]["block_hash"]  # kept across the resume


class Crash(RuntimeError):
  pass


@pytest.mark.slow  # two tiny runs, ~30 s
def test_a_crash_between_a_block_and_its_checkpoint_replays_the_round(tmp_path, monkeypatch):
  """The run dies right after round 1's block is written, before its checkpoint: the resume
  runs round 1 again, takes the block's signed counts instead of writing a second block (the
  recomputed global adapter must be the block's), and ends with a ledger that verifies."""
  workdir, cache = str(tmp_path / "run"), str(tmp_path / "cache")
  record = LedgerGate.record

  def record_then_crash(self, round_no, *args, **kw):
    out = record(self, round_no, *args, **kw)
    if round_no == 1:
      raise Crash(out)
    return out

  monkeypatch.setattr(LedgerGate, "record", record_then_crash)
  with pytest.raises(Crash):
    experiment.run(tiny_config(workdir, cache))
  monkeypatch.undo()
  assert not os.listdir(os.path.join(workdir, "checkpoints"))
  ledger = os.path.join(workdir, "ledger.jsonl")
  written = open(ledger, "rb").read()
  summary = experiment.run(tiny_config(workdir, cache))
  assert open(ledger, "rb").read().startswith(written)
  assert [b["round"] for b in L.Ledger.open(ledger).blocks if b["kind"] == "round"] == [1, 2]
  got = _records(workdir)
  assert [r["round"] for r in got] == [0, 1, 2]
  assert summary["ledger"]["valid"] and summary["ledger"]["blocks"] == 4  # genesis, 2, close
  assert summary["ledger"]["receipts"] == sum(r["ledger"]["accepted"] for r in got[1:])


def test_unknown_config_key_is_a_clear_error(tmp_path):
  cmd = _train_cmd(str(tmp_path / "w"), str(tmp_path / "c"), **{"fed.not_a_field": 1})
  out = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
  assert out.returncode != 0
  assert "not_a_field" in out.stderr
  assert not os.path.exists(tmp_path / "w")


def test_missing_checkpoint_path_exits_nonzero_and_writes_nothing(tmp_path):
  cmd = _train_cmd(str(tmp_path / "w"), str(tmp_path / "c"),
                   **{"model.hf_path": str(tmp_path / "missing")})
  out = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
  assert out.returncode == 2
  assert "is not a directory" in out.stderr
  assert not os.path.exists(tmp_path / "w")
