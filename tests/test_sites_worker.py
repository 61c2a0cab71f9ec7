"""The hospital worker and its local channel: the ClientApp shim imports no JAX; the socket is
private to the hospital's account and refuses a second worker; one worker process serves two
jobs one after another, and a worker restarted between rounds resumes from the state directory
(the run equals the simulation)."""

import os
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedlora_jax import ledger as L
from fedlora_jax.sites import channel
from fedlora_jax.sites.hospital import Hospital
from tests.run_fixtures import ROOT
from tests.sites_fixtures import SUBPROCESS_ENV, WorkerTransport, run_in_process, sites_config

HOSPITALS = ("cardiology", "oncology")


def test_client_app_imports_no_jax():
  code = ("import sys, fedlora_jax.sites.client_app; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax')))")
  out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": ROOT},
                       capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_channel_is_private_framed_and_refuses_a_second_worker(tmp_path):
  state = str(tmp_path / ("x" * 120) / "state")  # longer than a socket address may be
  with pytest.raises(channel.ChannelError, match="hospital worker not running at .*/worker/sock"):
    channel.request(state, "query", b"")
  sock = channel.listen(state)
  path = channel.socket_path(state)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
  assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700

  def serve(replies):
    for header in replies:
      conn, _ = sock.accept()
      with conn:
        assert channel.peer_uid(conn) == os.getuid()
        got, body = channel.recv_frames(conn)
        channel.send_frames(conn, header, body[::-1] if header["ok"] else b"")

  server = threading.Thread(target=serve, args=([{"ok": True}, {"ok": False, "error": "boom"}],))
  server.start()
  big = os.urandom(3 << 20)  # more than one recv
  assert channel.request(state, "train", big) == big[::-1]
  with pytest.raises(RuntimeError, match="^hospital worker: boom$"):
    channel.request(state, "train", b"x")
  server.join()
  with pytest.raises(channel.ChannelError, match="already listens"):
    channel.listen(state)
  sock.close()
  channel.listen(state).close()  # the socket file of a worker that died is replaced


@pytest.mark.slow
def test_one_worker_serves_two_jobs_and_a_restarted_worker_resumes(tmp_path):
  """Two worker processes (one per hospital) serve a FedAvg job, then a SCAFFOLD job; during the
  second job oncology's worker is killed after round 1 and started again. The same processes
  served both jobs (but the restarted one), each job keeps its own client state, both ledgers
  verify with every node's receipts, and the SCAFFOLD job equals the simulation."""
  from fedlora_jax.run import experiment
  from fedlora_jax.sites.local import LocalDeployment, enrol_local
  os.environ.update(SUBPROCESS_ENV)
  cache_dir, root = str(tmp_path / "cache"), str(tmp_path / "deploy")
  fedavg = sites_config(str(tmp_path / "fedavg"), cache_dir, HOSPITALS, **{"fed.rounds": 1,
                                                                          "eval.every": 1})
  scaffold = {"fed.algorithm": "scaffold", "fed.local_optimizer": "sgd", "fed.local_lr": 0.5}
  enrolment = enrol_local(fedavg, root)
  with LocalDeployment(root) as dep:
    for node in enrolment.nodes.values():
      dep.start_worker(node)
    dep.wait_workers()
    pids = {name: proc.pid for name, proc in dep.procs.items()}
    run_in_process(fedavg, root=root, transport_type=WorkerTransport)

    def restart_oncology(transport, line):
      if line.startswith("round   1"):
        dep.stop("worker-oncology")
        dep.start_worker(enrolment.nodes["oncology"])
        dep.wait_workers()

    second = sites_config(str(tmp_path / "scaffold"), cache_dir, HOSPITALS, **scaffold)
    run_in_process(second, root=root, transport_type=WorkerTransport, after_round=restart_oncology)
    assert dep.procs["worker-cardiology"].pid == pids["worker-cardiology"]
    assert dep.procs["worker-cardiology"].poll() is None
  sim_dir = str(tmp_path / "sim")
  experiment.run(sites_config(sim_dir, cache_dir, HOSPITALS, **scaffold))
  a = load_file(os.path.join(sim_dir, "adapter", "adapter_model.safetensors"))
  b = load_file(os.path.join(second.workdir, "adapter", "adapter_model.safetensors"))
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_allclose(b[name], a[name], atol=1e-5, err_msg=name)
  for job_cfg, rounds in ((fedavg, 1), (second, 2)):
    workdir = job_cfg.workdir
    ledger_path = os.path.join(workdir, "ledger.jsonl")
    ledger = L.Ledger.open(ledger_path)
    blocks = [b for b in ledger.blocks if b["kind"] == "round"]
    assert [len(b["participants"]) for b in blocks] == [2] * rounds
    for h in HOSPITALS:
      receipts = Hospital.receipts_dir(enrolment.nodes[h], job_cfg)
      check = L.verify_ledger(ledger_path, server_public_key=ledger.server.pk, receipts=receipts)
      assert check.ok and check.receipts == rounds, (workdir, h, check)
  for h in HOSPITALS:
    jobs = sorted(os.listdir(os.path.join(enrolment.nodes[h].state_dir, "client_state")))
    assert len(jobs) == 2, jobs


def test_worker_script_refuses_a_bad_node_config_with_one_line(tmp_path):
  script = os.path.join(ROOT, "scripts", "site_worker.py")
  flag = f'--node_config=hospital="x" train-file="{tmp_path}"'
  out = subprocess.run([sys.executable, script, flag],
                       env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith(
      "error: node config: missing ['test-file', 'keystore', 'state-dir'")
