"""`scripts/deploy_local.py`: enrol, start the processes, follow the run, stop everything."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

import ml_collections

from fedlora_jax.run.setup import expand
from fedlora_jax.run.workdir import MetricsLog
from fedlora_jax.sites.coordinator import progress_line
from fedlora_jax.sites.local import LocalDeployment, enrol_local


class DeployError(ChildProcessError):
  """The Flower run failed; names the log to read."""


def wait_for_port(port: int, timeout: float, proc) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise DeployError(f"the SuperLink exited with code {proc.returncode}")
    with socket.socket() as s:
      if s.connect_ex(("127.0.0.1", port)) == 0:
        return
    time.sleep(0.2)
  raise DeployError(f"the SuperLink did not listen on port {port} within {timeout:g} s")


def follow(dep: LocalDeployment, run_proc, workdir: str, progress=logging.info,
           on_record=None) -> None:
  """Prints one line per new metrics record until `flwr run` exits."""
  path = os.path.join(workdir, "metrics.jsonl")
  seen = 0
  while True:
    done = run_proc.poll() is not None
    records = MetricsLog.read(path) if os.path.exists(path) else []
    for rec in records[seen:]:
      progress(progress_line(rec))
      if on_record is not None:
        on_record(rec, dep)
    seen = max(seen, len(records))
    if done:
      return
    time.sleep(0.5)


def deploy(cfg: ml_collections.ConfigDict, on_record=None,
           started: list[int] | None = None) -> dict[str, Any]:
  """Runs the job across one worker and one SuperNode per hospital; returns the run's summary.

  `on_record(record, deployment)` sees each metrics record as it is written; `started` (when given) gets the
  process group id of every Flower process started.
  """
  workdir = expand(cfg.workdir)
  root = os.path.join(workdir, "deploy")
  enrolment = enrol_local(cfg, root)
  with LocalDeployment(root, tls=cfg.sites.tls, started=started) as dep:
    wait_for_port(dep.port, 60, dep.start_superlink())
    for node in enrolment.nodes.values():
      dep.start_worker(node)
    try:
      dep.wait_workers()
    except ConnectionError as e:  # channel.ChannelError
      raise DeployError(f"{e}; see {dep.logs}/") from e
    for node in enrolment.nodes.values():
      dep.start_supernode(node)
    started = time.time()
    run_proc = dep.run_app(enrolment.job_config)
    follow(dep, run_proc, workdir, on_record=on_record)
    summary = os.path.join(workdir, "summary.json")
    if run_proc.returncode != 0 or not os.path.exists(summary) or (
        os.path.getmtime(summary) < started):
      raise DeployError(f"the Flower run did not finish (flwr run exit {run_proc.returncode}); "
                        f"see {dep.logs}/")
  with open(summary) as f:
    return json.load(f)
