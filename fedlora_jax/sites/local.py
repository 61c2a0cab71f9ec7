"""A whole deployment on one machine: enrolment of every hospital, a SuperLink, one worker
(`scripts/site_worker.py`) and one SuperNode per hospital, `flwr run` of the app; every process
in its own process group, so that `close()` ends the group (stopping only `flower-supernode`
leaves its `flower-superexec` child).

Offline: telemetry, the update check and runtime dependency installation are off, and Flower's
home (`FLWR_HOME`, holding the connection in `config.toml`) is a directory of this deployment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import ml_collections

from fedlora_jax import ledger as L
from fedlora_jax.run.setup import base_model_dir, client_records, hospital_names
from fedlora_jax.sites import channel, job
from fedlora_jax.sites.node_config import NodeConfig, write_records

APP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flwr_app")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OFFLINE_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
               "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
# The SuperNode's SuperExec looks for a message to start a ClientApp for every this many seconds
# (Flower's default: 1 s of latency per message; the SuperNode's own 3 s poll is fixed).
LATENCY_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}


def _hospital_policy(cfg) -> dict[str, float]:
  """Each simulated hospital holds the job's example-level budget as its own policy (node config
  `max-epsilon`), so its worker refuses any release past it, whatever the server sends."""
  p = cfg.privacy
  if p.level != "example" or not p.target_epsilon > 0:
    return {}
  return {"max-epsilon": float(p.target_epsilon), "dp-delta": float(p.delta)}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@dataclasses.dataclass
class Enrolment:
  """What `enrol_local` prepared: the job config to run and every hospital's node config."""

  job_config: str  # path of the job config JSON
  nodes: dict[str, NodeConfig]


def enrol_local(cfg: ml_collections.ConfigDict, root: str) -> Enrolment:
  """Plays every party of a local demo: exports each hospital's questions to its own directory,
  creates its key in its own keystore and its enrolment record, and the operator's server key
  and registry. Keys come from the OS's randomness and are reused when they exist (resume)."""
  job.check_job(cfg)
  names, train, test, _ = client_records(cfg, set(range(len(hospital_names(cfg)))))
  base = base_model_dir(cfg)  # the shared base every party is given (built once, cached)
  backend = cfg.ledger.backend
  operator = os.path.join(root, "operator")
  server = L.enroll("server", os.path.join(operator, "keys"), 0, backend)
  registrations, nodes = [], {}
  for i, name in enumerate(names):
    site = os.path.join(root, "hospitals", name)
    os.makedirs(site, exist_ok=True)
    write_records(os.path.join(site, "train.jsonl"), train[i])
    write_records(os.path.join(site, "test.jsonl"), test[i])
    registrations.append(L.enroll(name, os.path.join(site, "keys"), len(train[i]), backend))
    nodes[name] = NodeConfig.parse({
        "hospital": name, "train-file": os.path.join(site, "train.jsonl"),
        "test-file": os.path.join(site, "test.jsonl"), "keystore": os.path.join(site, "keys"),
        "state-dir": os.path.join(site, "state"), "base-model": base,
        "server-public-key": server.pk.hex(), **_hospital_policy(cfg)})
  registry = os.path.join(operator, "registry.jsonl")
  with open(registry, "w") as f:
    f.writelines(L.registry_line(reg) + "\n" for reg in registrations)
  run_cfg = ml_collections.ConfigDict(cfg.to_dict())
  run_cfg.ledger.registry = registry
  run_cfg.sites.server_keystore = os.path.join(operator, "keys")
  path = os.path.join(operator, "job.json")
  with open(path, "w") as f:
    f.write(job.config_json(run_cfg))
  return Enrolment(path, nodes)


class LocalDeployment:
  """SuperLink + SuperNodes + `flwr run` as child process groups; a context manager."""

  def __init__(self, root: str, *, tls: bool = False, started: list[int] | None = None):
    self.root = root
    self.started = [] if started is None else started  # every process group ever started
    self.home = os.path.join(root, "flwr_home")
    self.logs = os.path.join(root, "logs")
    os.makedirs(self.home, exist_ok=True)
    os.makedirs(self.logs, exist_ok=True)
    self.port = free_port()
    self.tls = generate_certificates(os.path.join(root, "certs")) if tls else None
    self.procs: dict[str, subprocess.Popen] = {}
    self.nodes: dict[str, NodeConfig] = {}  # the node configs of the SuperNodes started
    pythonpath = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    self.env = {**os.environ, **OFFLINE_ENV, **LATENCY_ENV, "FLWR_HOME": self.home,
                "PYTHONPATH": pythonpath}
    with open(os.path.join(self.home, "config.toml"), "w") as f:
      f.write('[superlink]\ndefault = "local"\n\n[superlink.local]\n'
              f'address = "127.0.0.1:{self.port}"\n')
      f.write(f'root-certificates = "{self.tls["ca"]}"\n' if self.tls else "insecure = true\n")

  def _bin(self, name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)

  def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
    log = open(os.path.join(self.logs, f"{name}.log"), "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                            cwd=self.root, start_new_session=True)  # its own process group
    log.close()
    self.procs[name] = proc
    self.started.append(proc.pid)
    return proc

  def _security(self) -> list[str]:
    return ["--insecure"] if self.tls is None else []

  def start_superlink(self) -> subprocess.Popen:
    tls = [] if self.tls is None else ["--ssl-ca-certfile", self.tls["ca"], "--ssl-certfile",
                                       self.tls["cert"], "--ssl-keyfile", self.tls["key"]]
    return self._start("superlink", [self._bin("flower-superlink"), *self._security(), *tls,
                                     "--host", "127.0.0.1", "--port", str(self.port),
                                     "--disable-runtime-dependency-installation"])

  def start_worker(self, node: NodeConfig) -> subprocess.Popen:
    """The hospital's long-lived worker (`wait_workers` waits until it listens)."""
    self.nodes[node.hospital] = node
    return self._start(f"worker-{node.hospital}", [
        sys.executable, os.path.join(REPO_ROOT, "scripts", "site_worker.py"),
        f"--node_config={node.flower_arg()}"])

  def wait_workers(self, timeout: float = 300.0) -> None:
    """Returns once every worker started listens on its socket; raises if one exited."""
    for name, proc in self.procs.items():
      if name.startswith("worker-"):
        node = self.nodes[name.removeprefix("worker-")]
        channel.wait_ready(node.state_dir, timeout, alive=lambda p=proc: p.poll() is None)

  def start_supernode(self, node: NodeConfig) -> subprocess.Popen:
    self.nodes[node.hospital] = node
    tls = [] if self.tls is None else ["--root-certificates", self.tls["ca"]]
    return self._start(f"supernode-{node.hospital}", [
        self._bin("flower-supernode"), *self._security(), *tls,
        "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()),
        "--node-config", node.flower_arg()])

  def run_app(self, job_config: str) -> subprocess.Popen:
    """`flwr run` of the app against the local SuperLink, streaming its logs to logs/run.log."""
    return self._start("run", [self._bin("flwr"), "run", APP_DIR, "local", "--stream",
                               "--run-config", f"job-config={json.dumps(job_config)}"])

  def stop(self, name: str, grace: float = 10.0) -> None:
    """Ends the process group of `name` (SIGTERM, then SIGKILL after `grace` seconds), then the
    groups its descendants started in sessions of their own (the SuperLink starts its
    superexec, which runs the ServerApp, detached)."""
    proc = self.procs.pop(name, None)
    if proc is None:
      return
    detached = _descendant_groups(proc.pid) - {proc.pid}  # before the tree is orphaned
    for sig in (signal.SIGTERM, signal.SIGKILL):
      try:
        os.killpg(proc.pid, sig)
      except ProcessLookupError:
        break
      try:
        proc.wait(timeout=grace)
        _wait_group_gone(proc.pid, grace)
        break
      except subprocess.TimeoutExpired:
        continue
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    for pgid in detached:
      _end_group(pgid, grace)

  def close(self) -> None:
    """Stops every process group; a second Ctrl-C or SIGTERM meanwhile cannot cut it short."""
    main = threading.current_thread() is threading.main_thread()
    held = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)
            } if main else {}
    try:
      for name in ["run", *[n for n in self.procs if n.startswith(("supernode", "worker"))],
                   "superlink"]:
        self.stop(name)
    finally:
      for sig, handler in held.items():
        signal.signal(sig, handler)

  def __enter__(self) -> LocalDeployment:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def group_alive(pgid: int) -> bool:
  try:
    os.killpg(pgid, 0)
    return True
  except ProcessLookupError:
    return False
  except PermissionError:
    return True


def _descendant_groups(pid: int) -> set[int]:
  """Process groups of every process below `pid` (from Linux's /proc; empty elsewhere)."""
  children: dict[int, list[int]] = {}
  for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
    try:
      with open(f"/proc/{entry}/stat") as f:  # "pid (comm) state ppid pgrp ..."
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
      children.setdefault(ppid, []).append(int(entry))
    except (OSError, ValueError, IndexError):
      continue
  groups, todo = set(), [pid]
  while todo:
    for child in children.get(todo.pop(), []):
      try:
        groups.add(os.getpgid(child))
      except ProcessLookupError:
        continue
      todo.append(child)
  return groups


def _end_group(pgid: int, grace: float) -> None:
  """SIGTERM to a process group that is not our child's, SIGKILL if it outlives `grace`."""
  for sig in (signal.SIGTERM, signal.SIGKILL):
    try:
      os.killpg(pgid, sig)
      _wait_group_gone(pgid, grace)
      return
    except ProcessLookupError:
      return
    except subprocess.TimeoutExpired:
      continue


def _wait_group_gone(pgid: int, timeout: float) -> None:
  deadline = time.time() + timeout
  while group_alive(pgid):
    if time.time() > deadline:
      raise subprocess.TimeoutExpired(str(pgid), timeout)
    time.sleep(0.1)


def generate_certificates(directory: str) -> dict[str, str]:
  """A throwaway CA and a server certificate for 127.0.0.1/localhost (local TLS demo)."""
  import datetime
  import ipaddress

  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import NameOID

  os.makedirs(directory, exist_ok=True)
  now = datetime.datetime.now(datetime.timezone.utc)
  valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

  def cert(subject, issuer, pub, signer, ca: bool, sans=None):
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
         .serial_number(x509.random_serial_number()).not_valid_before(valid[0])
         .not_valid_after(valid[1])
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
      b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(signer, hashes.SHA256())

  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlora-jax local CA")])
  ca = cert(ca_name, ca_name, ca_key.public_key(), ca_key, True)
  key = ec.generate_private_key(ec.SECP256R1())
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
  server = cert(name, ca_name, key.public_key(), ca_key, False,
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
  paths = {"ca": "ca.crt", "cert": "server.pem", "key": "server.key"}
  paths = {k: os.path.join(directory, v) for k, v in paths.items()}
  pem = serialization.Encoding.PEM
  with open(paths["ca"], "wb") as f:
    f.write(ca.public_bytes(pem))
  with open(paths["cert"], "wb") as f:
    f.write(server.public_bytes(pem))
  with open(paths["key"], "wb") as f:
    f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
  os.chmod(paths["key"], 0o600)
  return paths
