"""The sites mode without the network: every hospital's `Hospital` in this process behind the
coordinator's `Transport` interface, with hooks to drop or tamper with replies."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from fedlora_jax import ledger as L
from fedlora_jax.sites import job
from fedlora_jax.sites.coordinator import Coordinator
from fedlora_jax.sites.hospital import Hospital
from fedlora_jax.sites.local import enrol_local
from tests.run_fixtures import tiny_config


# Processes started by a test (Flower's, the hospital workers) are fresh interpreters: give them
# the numerics conftest gives this one.
SUBPROCESS_ENV = {"JAX_DEFAULT_MATMUL_PRECISION": "highest", "JAX_THREEFRY_PARTITIONABLE": "1"}


def sites_config(workdir: str, cache_dir: str, hospitals, **overrides):
  cfg = tiny_config(workdir, cache_dir, **{"data.hospitals": tuple(hospitals), "eval.every": 2,
                                           **overrides})
  cfg.sites.round_timeout = 300.0
  return cfg


class InProcessTransport:
  """`coordinator.Transport` calling each hospital's `handle` directly.

  `down`: hospitals that do not answer; `tamper(kind, hospital, reply) -> reply` edits a reply
  on its way to the server.
  """

  def __init__(self, cfg, nodes, tamper: Callable[[str, str, dict], dict] | None = None,
               impostors: dict[str, str] | None = None):
    self.cfg, self.nodes, self.tamper = cfg, nodes, tamper
    self.impostors = impostors or {}  # {hospital: keystore of another (unenrolled) key it signs with}
    self.down: set[str] = set()
    self.restart()

  def restart(self) -> None:
    """New Hospital objects (what a node restart or Flower's fresh process per message gives)."""
    self.hospitals = {h: Hospital(node, self.cfg) for h, node in self.nodes.items()}
    for h, keystore in self.impostors.items():
      node = self.nodes[h]
      self.hospitals[h].signer = L.HospitalSigner(
          h, keystore, Hospital.receipts_dir(node, self.cfg), node.server_public_key,
          self.cfg.ledger.backend)

  def handle(self, h: str, kind: str, payload) -> dict[str, Any]:
    return self.hospitals[h].handle(kind, payload)

  def discover(self, payload, expected: int, timeout: float, admit) -> dict[str, dict[str, Any]]:
    claims = [{**self.handle(h, "query", payload)["result"], "node_id": i}
              for i, h in enumerate(self.nodes)]
    return {c["hospital"]: c for c in claims if admit(c) is None}

  def rejoin(self, payload, timeout: float, admit) -> dict[str, dict[str, Any]]:
    return {}

  def send(self, kind: str, payloads, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for h, p in payloads.items():
      if h in self.down:
        out[h] = f"no reply within {timeout:g} s"
        continue
      reply = self.handle(h, kind, p)
      reply = {**reply.pop("result"), **reply, "bytes_received": 0, "reply_bytes": 0}
      out[h] = self.tamper(kind, h, reply) if self.tamper else reply
    return out


class WorkerTransport(InProcessTransport):
  """Each hospital's messages go to its worker process over its socket, encoded as the
  ClientApp shim encodes them (Flower's RecordDict protobuf), with the job header the
  ServerApp adds."""

  def restart(self) -> None:
    self.hospitals = {}

  def handle(self, h: str, kind: str, payload) -> dict[str, Any]:
    from flwr.common import serde
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    from fedlora_jax.sites import channel
    from fedlora_jax.sites.messages import from_records, to_records
    records = to_records({"header": {"config": job.config_json(self.cfg)}, **payload})
    body = channel.request(self.nodes[h].state_dir, kind,
                           serde.recorddict_to_proto(records).SerializeToString())
    proto = ProtoRecordDict()
    proto.ParseFromString(body)
    return from_records(serde.recorddict_from_proto(proto))


def run_in_process(cfg, tamper=None, after_round: Callable[[InProcessTransport, str], None]
                   | None = None, impostors=None, root: str | None = None,
                   transport_type: type[InProcessTransport] = InProcessTransport,
                   prepare: Callable[[Coordinator, InProcessTransport], None] | None = None
                   ) -> tuple[dict, Any, InProcessTransport]:
  """Enrols the hospitals of `cfg` under `root` (`<workdir>/deploy`) and runs the coordinator;
  `prepare(coordinator, transport)` runs before it starts (e.g. to inject seeded DP secrets)."""
  enrolment = enrol_local(cfg, root or os.path.join(cfg.workdir, "deploy"))
  run_cfg = job.config_from_json(open(enrolment.job_config).read())
  transport = transport_type(run_cfg, enrolment.nodes, tamper, impostors)
  coordinator = Coordinator(run_cfg)
  if prepare is not None:
    prepare(coordinator, transport)
  progress = (lambda line: after_round(transport, line)) if after_round else (lambda line: None)
  return coordinator.run(transport, progress=progress), enrolment, transport


def client_state_files(state_dir: str) -> list[str]:
  """Sorted file names in the node's client-state directory of its one job."""
  jobs = os.listdir(os.path.join(state_dir, "client_state"))
  assert len(jobs) == 1, jobs
  return sorted(os.listdir(os.path.join(state_dir, "client_state", jobs[0])))


def check_folded_base(sim_dir, sites_dir, base_dir):
  """The base with FedEx-LoRA's residuals equals the simulation's, and differs from the base
  the nodes loaded; every round block binds the residual."""
  a = load_file(os.path.join(sim_dir, "base_with_residuals", "model.safetensors"))
  b = load_file(os.path.join(sites_dir, "base_with_residuals", "model.safetensors"))
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_allclose(b[name], a[name], atol=1e-5, err_msg=name)
  original = load_file(os.path.join(base_dir, "model.safetensors"))
  changed = [n for n in b if not np.array_equal(b[n], original[n])]
  assert changed and all(n.endswith("_proj.weight") for n in changed), changed
  blocks = [x for x in L.Ledger.open(os.path.join(sites_dir, "ledger.jsonl")).blocks
            if x["kind"] == "round"]
  assert all(x["residual_digest"] is not None for x in blocks)


def job_receipts(state_dir: str) -> str:
  """The receipts directory of the one job a node's state directory has served (a path that
  does not exist when the node never signed anything)."""
  root = os.path.join(state_dir, "receipts")
  jobs = sorted(os.listdir(root)) if os.path.isdir(root) else []
  assert len(jobs) <= 1, jobs
  return os.path.join(root, jobs[0] if jobs else "no-job")
