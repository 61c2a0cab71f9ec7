"""End to end across sites: a SuperLink and three SuperNodes on localhost, each hospital with its
own data, key and state directory, against the in-process simulation of the same config."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

pytest.importorskip("flwr")

from fedlora_jax import ledger as L  # noqa: E402
from fedlora_jax.run import experiment  # noqa: E402
from fedlora_jax.sites.deploy import deploy  # noqa: E402
from fedlora_jax.sites.local import group_alive  # noqa: E402
from tests.run_fixtures import DEFAULT, ROOT, TINY_OVERRIDES, cli_flags  # noqa: E402
from tests.sites_fixtures import (SUBPROCESS_ENV, check_folded_base,  # noqa: E402
                                  client_state_files, job_receipts, sites_config)

pytestmark = [pytest.mark.slow, pytest.mark.flower]
HOSPITALS = ("cardiology", "oncology", "trauma")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


def simulation_and_sites(sim_dir, site_dir, cache_dir, **overrides):
  """The same config run in the simulation and across local Flower SuperNodes."""
  os.environ.update(SUBPROCESS_ENV)
  sim = experiment.run(sites_config(sim_dir, cache_dir, HOSPITALS, **overrides))
  started, lines = [], []
  sites = deploy(sites_config(site_dir, cache_dir, HOSPITALS, **overrides),
                 on_record=lambda rec, dep: lines.append(rec), started=started)
  return sim_dir, sim, site_dir, sites, started, lines


@pytest.fixture(scope="module")
def fedavg_runs(tmp_path_factory, cache_dir):
  return simulation_and_sites(*(str(tmp_path_factory.mktemp(n)) for n in ("sim", "sites")),
                              cache_dir)


def _adapter(workdir):
  return load_file(os.path.join(workdir, "adapter", "adapter_model.safetensors"))


def test_flower_fedavg_equals_simulation(fedavg_runs):
  sim_dir, sim, site_dir, sites, _, lines = fedavg_runs
  a, b = _adapter(sim_dir), _adapter(site_dir)
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_allclose(b[name], a[name], atol=1e-5, err_msg=name)
  assert list(sites["accuracy"]) == list(HOSPITALS)
  for h in HOSPITALS:  # within one test question (16 per hospital)
    assert abs(sites["accuracy"][h] - sim["accuracy"][h]) <= 1 / 16 + 1e-9, h
  assert [r["round"] for r in lines] == [0, 1, 2]
  assert all(r["ledger"]["accepted"] == 3 and not r["ledger"]["missing"] for r in lines[1:])
  sim_records = [json.loads(l) for l in open(os.path.join(sim_dir, "metrics.jsonl"))]
  for mine, theirs in zip(lines[1:], sim_records[1:]):
    np.testing.assert_allclose(mine["weights"], theirs["weights"], rtol=1e-6)
    np.testing.assert_allclose(mine["loss"], theirs["loss"], rtol=1e-4)


def test_flower_run_directory_ledger_and_receipts(fedavg_runs):
  _, _, site_dir, sites, _, _ = fedavg_runs
  for name in ("config.json", "metrics.jsonl", "ledger.jsonl", "summary.json", "report.md",
               "accuracy_curves.png", "client_test_heatmap.png", "checkpoints/2",
               "adapter/adapter_config.json"):
    assert os.path.exists(os.path.join(site_dir, name)), name
  assert not os.path.exists(os.path.join(site_dir, "keys"))  # no hospital key at the server
  ledger_path = os.path.join(site_dir, "ledger.jsonl")
  server = L.Identity.load(os.path.join(site_dir, "deploy", "operator", "keys"), "server")
  replicas = [os.path.join(job_receipts(os.path.join(site_dir, "deploy", "hospitals", h,
                                                    "state")), "ledger.jsonl")
              for h in HOSPITALS]  # co-signed over Flower
  assert L.verify_ledger(ledger_path, server_public_key=server.pk, replicas=replicas).ok
  assert all(L.verify_ledger(r, server_public_key=server.pk).closed for r in replicas)
  ledger = L.Ledger.open(ledger_path)
  assert ledger.server.pk == server.pk  # the key the hospitals pinned
  digest = L.adapter_file_digest(os.path.join(site_dir, "adapter", "adapter_model.safetensors"))
  prov = L.find_provenance(ledger_path, digest)
  assert prov is not None and prov.round == 2 and len(prov.contributors) == 3
  for h in HOSPITALS:
    state = os.path.join(site_dir, "deploy", "hospitals", h, "state")
    receipts = [json.load(open(p)) for p in sorted(glob.glob(f"{job_receipts(state)}/*.json"))]
    assert [r["round"] for r in receipts] == [1, 2] and all(
        r["verdict"] == "accepted" for r in receipts)
    check = L.verify_ledger(ledger_path, server_public_key=server.pk,
                            receipts=job_receipts(state))
    assert check.ok and check.receipts == 2, check
    forged_dir = os.path.join(site_dir, "forged", h)
    os.makedirs(forged_dir)
    with open(os.path.join(forged_dir, "r1.json"), "w") as f:
      json.dump({**receipts[0], "verdict": "bad_signature"}, f)
    assert not L.verify_ledger(ledger_path, server_public_key=server.pk, receipts=forged_dir).ok


@pytest.mark.parametrize("algorithm,local", [
    ("scaffold", {"fed.local_optimizer": "sgd", "fed.local_lr": 0.5}),  # as configs/scaffold.py
    ("fedsa_lora", {}), ("fedex_lora", {})])
def test_flower_client_state_algorithms_equal_simulation(tmp_path, cache_dir, algorithm, local):
  """SCAFFOLD's c_i and FedSA-LoRA's B kept at real SuperNodes (a fresh ClientApp process per
  message, so the state comes from the node's state directory), and FedEx-LoRA's folded base
  sent to them, give the simulation's global adapter, FedSA-LoRA's personal adapters and
  FedEx-LoRA's base within 1e-5."""
  sim_dir, _, site_dir, _, started, lines = simulation_and_sites(
      str(tmp_path / "sim"), str(tmp_path / "sites"), cache_dir,
      **{"fed.algorithm": algorithm, **local})
  pairs = [(_adapter(sim_dir), _adapter(site_dir))]
  for h in HOSPITALS if algorithm == "fedsa_lora" else ():
    node_dir = os.path.join(site_dir, "deploy", "hospitals", h, "state", "adapter")
    pairs.append((load_file(os.path.join(sim_dir, "adapters", h, "adapter_model.safetensors")),
                  load_file(os.path.join(node_dir, "adapter_model.safetensors"))))
  for a, b in pairs:
    assert sorted(a) == sorted(b)
    for name in a:
      np.testing.assert_allclose(b[name], a[name], atol=1e-5, err_msg=name)
  if algorithm == "fedex_lora":
    adapter_config = json.load(open(os.path.join(site_dir, "adapter", "adapter_config.json")))
    check_folded_base(sim_dir, site_dir, adapter_config["base_model_name_or_path"])
  assert [r["ledger"]["accepted"] for r in lines[1:]] == [3, 3]
  for h in HOSPITALS:
    state = os.path.join(site_dir, "deploy", "hospitals", h, "state")
    assert [n for n in client_state_files(state) if n.startswith("committed")] == [
        "committed_000001.npz", "committed_000002.npz"], h
  assert not [g for g in started if group_alive(g)]


def test_flower_processes_are_gone(fedavg_runs):
  started = fedavg_runs[4]
  assert len(started) == 1 + 3 + 3 + 1  # SuperLink, workers, SuperNodes, flwr run
  assert not [g for g in started if group_alive(g)]


def test_killed_node_is_missing_then_rejoins_after_restart(tmp_path, cache_dir):
  """trauma's SuperNode (its whole process group) is killed once round 1 is recorded and started
  again at once: round 2 ends with the other two and records trauma as missing, "unavailable"
  (the SuperLink answers for the killed node, whose heartbeats stopped; a silent node would end
  the round after `sites.round_timeout`, as "timeout"); in round 3 the restarted node (a new Flower node id) takes part again."""
  os.environ.update(SUBPROCESS_ENV)
  cfg = sites_config(str(tmp_path), cache_dir, HOSPITALS, **{"fed.rounds": 3, "eval.every": 3})
  cfg.sites.round_timeout = 150.0  # above a normal round here (about 90 s on 2 busy cores)
  started, lines = [], []

  def on_record(record, dep):
    lines.append(record)
    if record["round"] == 1:
      dep.stop("supernode-trauma", grace=5.0)
      dep.start_supernode(dep.nodes["trauma"])

  deploy(cfg, on_record=on_record, started=started)
  assert [r["round"] for r in lines] == [0, 1, 2, 3]
  assert [r["ledger"]["accepted"] for r in lines[1:]] == [3, 2, 3]
  assert list(lines[2]["ledger"]["missing"]) == ["trauma"]
  assert lines[2]["valid"] == [True, True, False]
  blocks = [b for b in L.Ledger.open(os.path.join(str(tmp_path), "ledger.jsonl")).blocks
            if b["kind"] == "round"]
  assert [sorted(p["name"] for p in b["participants"]) for b in blocks] == [
      sorted(HOSPITALS), ["cardiology", "oncology"], sorted(HOSPITALS)]
  trauma = L.Identity.load(os.path.join(str(tmp_path), "deploy", "hospitals", "trauma", "keys"),
                           "trauma")
  assert [b["missing"] for b in blocks] == [
      [], [{"client_id": trauma.id, "reason": "unavailable"}], []]
  check = L.verify_ledger(os.path.join(str(tmp_path), "ledger.jsonl"))
  assert check.ok and check.missing == ((2, "trauma", "unavailable"),)
  assert len(started) == 1 + 3 + 3 + 1 + 1 and not [g for g in started if group_alive(g)]


def test_killed_worker_is_missing_and_the_run_finishes(tmp_path, cache_dir):
  """trauma's worker is killed once round 1 is recorded (its SuperNode stays up): its ClientApp
  finds no worker and raises, so round 2 and the final evaluation go on without trauma, which
  the ledger records as missing with `node_error`; the ledger verifies with every node's
  receipts. (A restarted worker resuming is in tests/test_sites_worker.py.)"""
  os.environ.update(SUBPROCESS_ENV)
  cfg = sites_config(str(tmp_path), cache_dir, HOSPITALS)
  lines = []

  def on_record(record, dep):
    lines.append(record)
    if record["round"] == 1:
      dep.stop("worker-trauma", grace=5.0)

  summary = deploy(cfg, on_record=on_record)
  assert [r["ledger"]["accepted"] for r in lines[1:]] == [3, 2]
  assert lines[2]["ledger"]["missing"]["trauma"].startswith("node error")
  assert np.isnan(summary["accuracy"]["trauma"]) and summary["ledger"]["valid"]
  ledger_path = os.path.join(str(tmp_path), "ledger.jsonl")
  server_pk = L.Ledger.open(ledger_path).server.pk
  check = L.verify_ledger(ledger_path, server_public_key=server_pk)
  assert check.ok and check.missing == ((2, "trauma", "node_error"),)
  for h in HOSPITALS:
    state = os.path.join(str(tmp_path), "deploy", "hospitals", h, "state")
    check = L.verify_ledger(ledger_path, server_public_key=server_pk,
                            receipts=job_receipts(state))
    # trauma's round-1 receipt came with the request to co-sign block 1, before its worker died
    assert check.ok and check.receipts == (1 if h == "trauma" else 2), (h, check)


def test_local_deployment_with_tls(tmp_path, cache_dir):
  """TLS on localhost with certificates the deployment generates: the SuperLink serves them,
  the SuperNodes and `flwr run` verify them against the generated CA (no insecure channel)."""
  os.environ.update(SUBPROCESS_ENV)
  cfg = sites_config(str(tmp_path), cache_dir, HOSPITALS[:2], **{"fed.rounds": 1})
  cfg.sites.tls = True
  started = []
  summary = deploy(cfg, started=started)
  assert summary["ledger"]["valid"] and len(summary["accuracy"]) == 2
  logs = os.path.join(str(tmp_path), "deploy", "logs")
  text = "".join(open(os.path.join(logs, n), errors="replace").read() for n in os.listdir(logs))
  assert "insecure" not in text.lower()
  assert open(os.path.join(str(tmp_path), "deploy", "flwr_home", "config.toml")).read().count(
      "root-certificates") == 1
  assert not [g for g in started if group_alive(g)]


def _processes_in(directory: str) -> dict[int, int]:
  """{pid: process group} of this user's processes whose working directory is `directory`
  (every Flower process of a local deployment runs in its root)."""
  out = {}
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      if os.readlink(f"/proc/{pid}/cwd") == directory:
        out[int(pid)] = os.getpgid(int(pid))
    except OSError:
      continue
  return out


def test_ctrl_c_stops_every_process_and_keeps_the_run_directory(tmp_path, cache_dir):
  """`scripts/deploy_local.py` in its own process group gets SIGINT (what Ctrl-C sends) once
  round 1's progress line is out: it exits with 130 and one line, every SuperLink / SuperNode /
  superexec / ServerApp process it started is gone, and the ledger and metrics written so far
  are intact (the ledger verifies under the server key)."""
  workdir = str(tmp_path / "run")
  flags = cli_flags({**TINY_OVERRIDES, "fed.rounds": 4, "eval.every": 4,
                     "data.hospitals": "('cardiology','oncology')"})
  script = os.path.join(ROOT, "scripts", "deploy_local.py")
  log = open(tmp_path / "stderr.txt", "w+")
  proc = subprocess.Popen([sys.executable, script, f"--config={DEFAULT}",
                           f"--config.workdir={workdir}", f"--config.cache_dir={cache_dir}",
                           *flags], env={**os.environ, **SUBPROCESS_ENV, "PYTHONPATH": ROOT},
                          stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
  try:
    deadline = time.time() + 900
    while "round   1 |" not in open(tmp_path / "stderr.txt").read():
      assert proc.poll() is None, open(tmp_path / "stderr.txt").read()[-3000:]
      assert time.time() < deadline, "no progress line for round 1"
      time.sleep(0.5)
    root = os.path.realpath(os.path.join(workdir, "deploy"))
    flower = _processes_in(root)
    assert len(flower) >= 1 + 2  # SuperLink, SuperNodes (and their superexec children)
    os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  text = open(tmp_path / "stderr.txt").read()
  after = text[text.index("round   1 |"):].splitlines()
  assert rc == 130, text[-3000:]
  assert "Traceback" not in text
  assert after[-1].startswith(f"interrupted: every Flower process stopped; {workdir} keeps")
  assert not [p for p in flower if os.path.exists(f"/proc/{p}")]
  assert not [g for g in set(flower.values()) if group_alive(g)]
  assert not _processes_in(root)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["round"] for r in records][:2] == [0, 1]
  server = L.Identity.load(os.path.join(workdir, "deploy", "operator", "keys"), "server")
  # An interrupted run has no closing block: its ledger verifies as an open one only.
  ledger_path = os.path.join(workdir, "ledger.jsonl")
  assert not L.verify_ledger(ledger_path, server_public_key=server.pk).ok
  check = L.verify_ledger(ledger_path, server_public_key=server.pk, allow_open=True)
  assert check.ok and not check.torn_tail and check.num_blocks >= 2, check


def test_flower_dp_sgd_reports_epsilon_per_hospital(tmp_path, cache_dir):
  """`scripts/deploy_local.py --config=configs/dp_sgd.py` (z calibrated for epsilon 8): DP-SGD
  in each hospital's worker with its own secret; summary.json holds each hospital's epsilon,
  every ledger round block the largest so far, and `verify_ledger` prints the last one."""
  workdir = str(tmp_path / "run")
  flags = cli_flags({**TINY_OVERRIDES, "eval.every": 2,
                     "data.hospitals": "('cardiology','oncology')"})
  env = {**os.environ, **SUBPROCESS_ENV, "PYTHONPATH": ROOT}
  run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "deploy_local.py"),
                        f"--config={os.path.join(ROOT, 'configs', 'dp_sgd.py')}",
                        f"--config.workdir={workdir}", f"--config.cache_dir={cache_dir}",
                        *flags], env=env, capture_output=True, text=True, timeout=1500)
  assert run.returncode == 0, run.stderr[-3000:]
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  eps = summary["privacy"]["epsilon"]
  assert sorted(eps) == ["cardiology", "oncology"] and 0 < max(eps.values()) <= 8.0
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))][1:]
  assert [r["round"] for r in records] == [1, 2] and records[-1]["privacy"]["epsilon"] == eps
  ledger_path = os.path.join(workdir, "ledger.jsonl")
  blocks = L.Ledger.open(ledger_path).blocks
  z = summary["privacy"]["noise_multiplier"]
  assert blocks[0]["rules"]["privacy"] == {"unit": "example", "delta": 1e-5,
                                           "noise_multiplier": z}
  assert [b["privacy"]["epsilon"] for b in blocks if b["kind"] == "round"] == [
      max(r["privacy"]["epsilon"].values()) for r in records]
  check = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "verify_ledger.py"),
                          f"--ledger={ledger_path}"], env=env, capture_output=True, text=True)
  assert check.returncode == 0, check.stdout + check.stderr
  assert f"privacy spent: epsilon {max(eps.values()):.4g} at delta 1e-05 per example" in (
      check.stdout)
  for h in ("cardiology", "oncology"):  # each hospital's secret stays in its keystore
    assert os.path.exists(os.path.join(workdir, "deploy", "hospitals", h, "keys", "dp_secret"))
  assert not os.path.exists(os.path.join(workdir, "keys"))  # the server holds no DP secret
