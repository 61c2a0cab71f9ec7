"""Faults across sites (without the network): forged signatures, updates that do not match
their digest, keys not in the registry and silent nodes are rejected or recorded as missing,
never aggregated; bad node configs fail with one line naming the problem."""

import glob
import json
import os

import numpy as np
import pytest

from fedlora_jax import ledger as L
from fedlora_jax.sites import codec
from fedlora_jax.sites.node_config import NodeConfig, NodeConfigError
from tests.sites_fixtures import client_state_files, job_receipts, run_in_process, sites_config

HOSPITALS = ("cardiology", "oncology", "trauma", "maternity")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
def test_faults_are_rejected_recorded_and_never_aggregated(tmp_path, cache_dir):
  """trauma's node reports a key the registry does not hold: refused at the start (recorded),
  it gets no message and is missing in every round. Round 1: cardiology's signature is forged,
  oncology's update is not what it signed; only maternity is aggregated. Round 2: maternity
  does not answer (missing), oncology's attestation is malformed (missing, and no receipt its
  node could not settle is queued: the final evaluation reaches it)."""
  cfg = sites_config(str(tmp_path), cache_dir, HOSPITALS)
  impostor = str(tmp_path / "impostor")
  L.enroll("trauma", impostor, 1)
  forger = L.Identity.load(impostor, "trauma")
  updates = {}

  def tamper(kind, h, reply):
    if kind != "train":
      return reply
    att = dict(reply["attestation"])
    if h == "cardiology" and att["round"] == 1:
      att["signature"] = forger.sign(b"something else").hex()
    if h == "oncology" and att["round"] == 1:
      name = sorted(reply["update"])[0]
      reply["update"] = {**reply["update"], name: reply["update"][name] + 1e-3}
    if h == "oncology" and att["round"] == 2:
      att = {**att, "signature": "not hex"}
    updates[(h, att["round"])] = reply["update"]
    return {**reply, "attestation": att}

  def silence(transport, line):
    if line.startswith("round   1"):
      transport.down.add("maternity")

  # trauma's node signs with a key that is not the one it enrolled
  summary, enrolment, transport = run_in_process(cfg, tamper=tamper, after_round=silence,
                                                 impostors={"trauma": impostor})
  ledger_path = os.path.join(cfg.workdir, "ledger.jsonl")
  server_pk = L.Ledger.open(ledger_path).server.pk
  # maternity missed the closing block; trauma's node was refused: it holds no replica
  replicas = [os.path.join(job_receipts(enrolment.nodes[h].state_dir), "ledger.jsonl")
              for h in HOSPITALS if h not in ("maternity", "trauma")]
  assert L.verify_ledger(ledger_path, server_public_key=server_pk, replicas=replicas).ok
  for replica in replicas:  # each hospital's copy verifies on its own: the same, closed ledger
    assert open(replica).read() == open(ledger_path).read()
  blocks = [b for b in L.Ledger.open(ledger_path).blocks if b["kind"] == "round"]
  reasons = lambda b: sorted(r["reason"] for r in b["rejected"])
  assert [p["name"] for p in blocks[0]["participants"]] == ["maternity"]
  assert reasons(blocks[0]) == ["bad_signature", "digest_mismatch"]
  assert [p["name"] for p in blocks[1]["participants"]] == ["cardiology"]
  assert reasons(blocks[1]) == []
  ids = {h: L.Identity.load(enrolment.nodes[h].keystore, h).id for h in HOSPITALS}
  assert [b["missing"] for b in blocks] == [
      [{"client_id": ids["trauma"], "reason": "not_connected"}],
      [{"client_id": ids[h], "reason": r} for h, r in (
          ("trauma", "not_connected"), ("maternity", "timeout"), ("oncology", "malformed_reply"))]]
  records = [json.loads(l) for l in open(os.path.join(cfg.workdir, "metrics.jsonl"))]
  assert [(r["hospital"], r["reason"]) for r in records[0]["refused_nodes"]] == [
      ("trauma", "reports a key that is not trauma's registered key")]
  assert records[1]["valid"] == [False, False, False, True]  # registry order: sampling order
  assert list(records[2]["ledger"]["missing"]) == ["trauma", "maternity", "oncology"]
  assert records[2]["valid"] == [True, False, False, False]
  assert not np.isnan(summary["accuracy"]["oncology"])  # its node still answers
  # Round 1 aggregated maternity's update alone (FedAvg with one client: the global is it).
  block1_global = blocks[0]["global_digest"]
  assert L.tree_digest(updates[("maternity", 1)]).hex() == block1_global
  # Receipts: every submission's verdict, signed by the server and matching the ledger.
  for h in HOSPITALS:
    state = enrolment.nodes[h].state_dir
    receipts = [json.load(open(p)) for p in sorted(glob.glob(f"{job_receipts(state)}/*.json"))]
    if h != "trauma":  # the refused node was never sent a message: it attested nothing
      check = L.verify_ledger(ledger_path, server_public_key=server_pk,
                              receipts=job_receipts(state))
      assert check.ok and check.receipts == len(receipts), (h, check)
    verdicts = [r["verdict"] for r in receipts]
    expected = {"cardiology": ["bad_signature", "accepted"], "oncology": ["digest_mismatch"],
                "trauma": [], "maternity": ["accepted"]}[h]
    # (maternity's receipt came with the request to co-sign block 1; silent since round 2)
    assert verdicts == expected, h
    # a rejected update never becomes the node's client state
    expected = {"cardiology": ["committed_000002"], "oncology": ["pending_000002"],
                "trauma": [], "maternity": ["committed_000001"]}[h]
    assert client_state_files(state) == [
        f"{name}.npz" for name in expected], h


def test_bad_node_config_is_one_line(tmp_path):
  base = {"hospital": "cardiology", "train-file": str(tmp_path / "train.jsonl"),
          "test-file": str(tmp_path / "test.jsonl"), "keystore": str(tmp_path / "keys"),
          "state-dir": str(tmp_path / "state"), "base-model": str(tmp_path),
          "server-public-key": "00" * 48}
  with pytest.raises(NodeConfigError, match="train-file .*train.jsonl does not exist"):
    NodeConfig.parse(base)
  (tmp_path / "train.jsonl").write_text("{}\n")
  (tmp_path / "test.jsonl").write_text("{}\n")
  with pytest.raises(NodeConfigError, match="keystore .* is not a directory"):
    NodeConfig.parse(base)
  L.Identity.generate("cardiology").save(tmp_path / "keys")
  with pytest.raises(NodeConfigError, match="hospital 'radiology' has no key"):
    NodeConfig.parse({**base, "hospital": "radiology"})
  with pytest.raises(NodeConfigError, match=r"missing \['keystore'\], unknown \['colour'\]"):
    NodeConfig.parse({**{k: v for k, v in base.items() if k != "keystore"}, "colour": "x"})
  with pytest.raises(NodeConfigError, match="server-public-key must be 48 bytes"):
    NodeConfig.parse({**base, "server-public-key": "abc"})
  node = NodeConfig.parse(base)
  # the `--node-config` string Flower parses carries every key
  assert all(f'{k}="' in node.flower_arg() for k in ("hospital", "state-dir", "base-model"))
  assert (node.max_epsilon, "max-epsilon" in node.flower_arg()) == (None, False)
  # the hospital's own privacy policy: parsed, checked, and carried by the Flower argument
  from flwr.common.config import parse_config_args
  policy = NodeConfig.parse({**base, "max-epsilon": "4", "dp-delta": "1e-6"})
  assert (policy.max_epsilon, policy.dp_delta) == (4.0, 1e-6)
  assert NodeConfig.parse(parse_config_args([policy.flower_arg()])) == policy
  for bad, match in (({"max-epsilon": "-1"}, "max-epsilon must be > 0"),
                     ({"max-epsilon": "inf"}, "max-epsilon must be > 0"),
                     ({"max-epsilon": "8", "dp-delta": "1"}, r"dp-delta in \(0, 1\)"),
                     ({"max-epsilon": "many"}, "must be numbers"),
                     ({"dp-delta": "1e-5"}, "dp-delta without max-epsilon")):
    with pytest.raises(NodeConfigError, match=match):
      NodeConfig.parse({**base, **bad})


def test_codec_round_trip_and_refusals():
  like = {"layers": {"0": {"q_proj": {"lora_A": np.zeros((2, 4), np.float32),
                                      "lora_B": np.zeros((4, 2), np.float32)}}}}
  lora = {"layers": {"0": {"q_proj": {"lora_A": np.arange(8, dtype=np.float32).reshape(2, 4),
                                      "lora_B": np.ones((4, 2), np.float32)}}}}
  arrays = codec.lora_arrays(lora)
  assert sorted(arrays) == ["base_model.model.layers.0.q_proj.lora_A.weight",
                            "base_model.model.layers.0.q_proj.lora_B.weight"]
  back = codec.lora_from_arrays(arrays, like)
  np.testing.assert_array_equal(back["layers"]["0"]["q_proj"]["lora_A"], np.arange(8).reshape(2, 4))
  with pytest.raises(codec.MessageError, match="missing arrays"):
    codec.lora_from_arrays({}, like)
  bad = {**arrays, "base_model.model.layers.0.q_proj.lora_B.weight": np.ones((3, 2), np.float32)}
  with pytest.raises(codec.MessageError, match=r"has shape \(3, 2\), expected \(4, 2\)"):
    codec.lora_from_arrays(bad, like)
  state = {"c": like, "opt": (np.zeros((), np.int32),)}
  assert codec.tree_from_arrays(codec.tree_arrays(state), state, "s")["opt"][0].dtype == np.int32
  # a 0-d array comes back from Flower's wire format as shape [1] (FedSA-LoRA's `trained` flag)
  wire = {**codec.tree_arrays(state), "['opt'][0]": np.asarray([7], np.int32)}
  assert codec.tree_from_arrays(wire, state, "s")["opt"][0].shape == ()
  with pytest.raises(codec.MessageError, match=r"has shape \(2,\), expected \(\)"):
    codec.tree_from_arrays({**wire, "['opt'][0]": np.zeros(2, np.int32)}, state, "s")


class ServerCrash(RuntimeError):
  pass


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint_every", [1, 2])
def test_receipts_reach_the_nodes_after_a_server_crash(tmp_path, cache_dir, checkpoint_every):
  """The server dies right after round 1 is recorded, before its receipts are delivered. On
  resume it sends them again: from the checkpoint of round 1 (every=1), or while replaying
  round 1 from the ledger (every=2: no checkpoint of round 1). Every node ends with the
  receipts of both rounds, both client states committed, and a ledger its receipts verify."""
  cfg = sites_config(str(tmp_path), cache_dir, HOSPITALS[:2], **{"checkpoint.every":
                                                                 checkpoint_every})

  def crash(transport, line):
    if line.startswith("round   1"):
      raise ServerCrash(line)

  with pytest.raises(ServerCrash):
    run_in_process(cfg, after_round=crash)
  enrolment = run_in_process(cfg)[1]  # the nodes keep their state directories
  ledger_path = os.path.join(cfg.workdir, "ledger.jsonl")
  ledger = L.Ledger.open(ledger_path)
  assert [b["round"] for b in ledger.blocks if b["kind"] == "round"] == [1, 2]
  for h in HOSPITALS[:2]:
    state = enrolment.nodes[h].state_dir
    receipts = [json.load(open(p)) for p in sorted(glob.glob(f"{job_receipts(state)}/*.json"))]
    assert [(r["round"], r["verdict"]) for r in receipts] == [(1, "accepted"), (2, "accepted")]
    check = L.verify_ledger(ledger_path, server_public_key=ledger.server.pk,
                            receipts=job_receipts(state))
    assert check.ok and check.receipts == 2, (h, check)
    committed = [n for n in client_state_files(state) if n.startswith("committed")]
    assert committed == ["committed_000001.npz", "committed_000002.npz"], h


@pytest.mark.slow
def test_a_replayed_round_that_recomputes_another_adapter_is_refused(tmp_path, cache_dir):
  """The server dies after round 1's block is written, before any checkpoint (every=2). On
  resume round 1 is replayed from its block, whose signed counts stand in for verifying again;
  here cardiology's update is not the one it signed, so the global adapter recomputed is not
  the block's: the resume is refused and the ledger stays as the crash left it."""
  cfg = sites_config(str(tmp_path), cache_dir, HOSPITALS[:2], **{"checkpoint.every": 2})

  def crash(transport, line):
    if line.startswith("round   1"):
      raise ServerCrash(line)

  with pytest.raises(ServerCrash):
    run_in_process(cfg, after_round=crash)
  ledger_path = os.path.join(cfg.workdir, "ledger.jsonl")
  written = open(ledger_path, "rb").read()

  def nudge(kind, h, reply):
    if kind != "train" or h != HOSPITALS[0]:
      return reply
    update = dict(reply["update"])
    name = sorted(update)[0]
    update[name] = update[name] + np.float32(1e-3)
    return {**reply, "update": update}

  with pytest.raises(L.LedgerError, match="round 1: recomputed global_digest differs"):
    run_in_process(cfg, tamper=nudge)
  assert open(ledger_path, "rb").read() == written
  assert L.verify_ledger(ledger_path, allow_open=True).ok


def test_base_changes_travel_exactly_and_unknown_weights_are_refused():
  """FedEx-LoRA's folded base: only changed weights travel, and land bit for bit."""
  import ml_dtypes
  base = {"layers": {"0": {"q_proj": {"weight": np.zeros((2, 3), ml_dtypes.bfloat16)}}},
          "norm": {"weight": np.ones(3, np.float32)}}
  original = {"layers.0.q_proj.weight": base["layers"]["0"]["q_proj"]["weight"],
              "norm.weight": base["norm"]["weight"]}
  folded = np.full((2, 3), 1 / 3, np.float32).astype(ml_dtypes.bfloat16)
  changes = codec.base_changes({**original, "layers.0.q_proj.weight": folded}, original)
  assert list(changes) == ["layers.0.q_proj.weight"]
  assert codec.base_changes(original, original) == {}
  got = codec.with_base_changes(base, changes)
  assert got["layers"]["0"]["q_proj"]["weight"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(got["layers"]["0"]["q_proj"]["weight"], folded)
  assert got["norm"]["weight"] is base["norm"]["weight"]
  with pytest.raises(codec.MessageError, match=r"unexpected \['lm_head.weight'\]"):
    codec.with_base_changes(base, {"lm_head.weight": np.ones(1, np.float32)})


def test_submission_digest_covers_the_client_state():
  update = {"a": np.ones((2, 2), np.float32)}
  state = {"['c']": np.zeros(3, np.float32)}
  assert codec.submission_digest(update, {}, {}) == L.tree_digest(update)  # as the simulation
  signed = codec.submission_digest(update, state, state)
  assert signed == L.tree_digest({"update": update, "client_state_old": state,
                                  "client_state_new": state})
  assert codec.submission_digest(update, state, {"['c']": np.ones(3, np.float32)}) != signed
  assert codec.submission_digest(update, {"['c']": np.ones(3, np.float32)}, state) != signed


@pytest.mark.slow
def test_client_state_the_hospital_did_not_sign_is_rejected(tmp_path, cache_dir):
  """SCAFFOLD: oncology's reply carries its signed update with a new control variate other than
  the one it signed: the submission is rejected (digest_mismatch) and aggregated with weight 0,
  so the server never adopts that state; cardiology's is accepted."""
  cfg = sites_config(str(tmp_path), cache_dir, HOSPITALS[:2], **{
      "fed.algorithm": "scaffold", "fed.local_optimizer": "sgd", "fed.local_lr": 0.5,
      "fed.rounds": 1, "eval.every": 1})

  def tamper(kind, h, reply):
    if kind == "train" and h == "oncology":
      reply["client_state_new"] = {k: v + 1.0 for k, v in reply["client_state_new"].items()}
    return reply

  run_in_process(cfg, tamper=tamper)
  blocks = [b for b in L.Ledger.open(os.path.join(cfg.workdir, "ledger.jsonl")).blocks
            if b["kind"] == "round"]
  assert [p["name"] for p in blocks[0]["participants"]] == ["cardiology"]
  assert [r["reason"] for r in blocks[0]["rejected"]] == ["digest_mismatch"]
  records = [json.loads(l) for l in open(os.path.join(cfg.workdir, "metrics.jsonl"))]
  assert records[1]["valid"] == [True, False]


def test_flower_transport_admits_a_node_only_with_its_hospitals_registered_key(monkeypatch):
  """Two nodes claim trauma: the one reporting another key is refused (and recorded), the one
  with the registered key is bound; a node connecting later with a wrong key (an impostor of a
  re-joining node) is refused, never asked again, and the hospital stays bound to its node."""
  from types import SimpleNamespace

  from fedlora_jax.sites.coordinator import Coordinator
  from fedlora_jax.sites.messages import to_records
  from flwr.supercore.task_identity import TaskIdentity

  from fedlora_jax.sites.server_app import FlowerTransport
  for field in ("_run_id", "_node_id", "_task_id"):  # as inside a ServerApp's run
    monkeypatch.setattr(TaskIdentity, field, 1)
  good, bad = "aa" * 48, "bb" * 48
  claims = {1: {"hospital": "trauma", "public_key": bad},
            2: {"hospital": "trauma", "public_key": good},
            3: {"hospital": "oncology", "public_key": good}}  # not oncology's key

  class Grid:
    nodes, asked = [1, 2], []

    def get_node_ids(self):
      return list(self.nodes)

    def push_messages(self, msgs):
      self.asked = [m.metadata.dst_node_id for m in msgs]
      return [f"m{n}" for n in self.asked]

    def pull_messages(self, ids):
      return [SimpleNamespace(has_error=lambda: False, content=to_records({"result": claims[n]}),
                              metadata=SimpleNamespace(src_node_id=n, reply_to_message_id=f"m{n}"))
              for n in self.asked if f"m{n}" in ids]

  coordinator = object.__new__(Coordinator)  # only its registry's keys are needed here
  coordinator.keys, coordinator.refused = {"trauma": good, "oncology": "cc" * 48}, []
  grid = Grid()
  transport = FlowerTransport(grid, {"config": "{}"})
  assert transport.discover({"task": {}}, 2, 1.0, coordinator.admit) == {
      "trauma": {**claims[2], "node_id": 2}}
  assert transport.node_of == {"trauma": 2}
  grid.nodes = [1, 2, 3]
  assert transport.rejoin({"task": {}}, 1.0, coordinator.admit) == {}
  assert grid.asked == [3] and transport.node_of == {"trauma": 2}
  grid.asked = []
  assert transport.rejoin({"task": {}}, 1.0, coordinator.admit) == {} and grid.asked == []
  assert coordinator._refused()["refused_nodes"] == [
      {"node_id": 1, "hospital": "trauma", "reason": "reports a key that is not trauma's "
                                                     "registered key"},
      {"node_id": 3, "hospital": "oncology", "reason": "reports a key that is not oncology's "
                                                       "registered key"}]


def test_exchange_collects_replies_as_they_come_and_stops_at_the_timeout():
  """Replies arriving over several pulls are all returned, each once; a node that never answers
  ends the exchange at the timeout with the replies that came."""
  import time
  from types import SimpleNamespace

  from fedlora_jax.sites.server_app import exchange

  class Grid:
    def __init__(self, arrive_at: dict[str, int]):
      self.arrive_at, self.pulls = arrive_at, 0  # message id -> pull that first returns it

    def push_messages(self, msgs):
      return list(self.arrive_at)

    def pull_messages(self, ids):
      self.pulls += 1
      return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
              for i in sorted(ids) if self.arrive_at[i] <= self.pulls]

  grid = Grid({"a": 1, "b": 3, "c": 2})
  got = exchange(grid, [], timeout=60.0)
  assert sorted(m.metadata.reply_to_message_id for m in got) == ["a", "b", "c"]
  assert grid.pulls == 3  # stops as soon as every reply is in
  grid = Grid({"a": 2, "b": 10**9})
  t0 = time.time()
  got = exchange(grid, [], timeout=0.5)
  assert [m.metadata.reply_to_message_id for m in got] == ["a"]
  assert 0.5 <= time.time() - t0 < 5.0
