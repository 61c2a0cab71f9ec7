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
from tests.sites_fixtures import run_in_process, sites_config

HOSPITALS = ("cardiology", "oncology", "trauma", "maternity")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
def test_faults_are_rejected_recorded_and_never_aggregated(tmp_path, cache_dir):
  """Round 1: cardiology's signature is forged, oncology's update is not what it signed,
  trauma signs with a key the registry does not hold; only maternity is aggregated. Round 2:
  maternity does not answer (missing); trauma is still unregistered."""
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
  replicas = [os.path.join(enrolment.nodes[h].state_dir, "receipts", "ledger.jsonl")
              for h in HOSPITALS if h != "maternity"]  # maternity missed the closing block
  assert L.verify_ledger(ledger_path, server_public_key=server_pk, replicas=replicas).ok
  for replica in replicas:  # each hospital's copy verifies on its own: the same, closed ledger
    assert open(replica).read() == open(ledger_path).read()
  blocks = [b for b in L.Ledger.open(ledger_path).blocks if b["kind"] == "round"]
  reasons = lambda b: sorted(r["reason"] for r in b["rejected"])
  assert [p["name"] for p in blocks[0]["participants"]] == ["maternity"]
  assert reasons(blocks[0]) == ["bad_signature", "digest_mismatch", "unregistered"]
  assert sorted(p["name"] for p in blocks[1]["participants"]) == ["cardiology", "oncology"]
  assert reasons(blocks[1]) == ["unregistered"]
  maternity = L.Identity.load(enrolment.nodes["maternity"].keystore, "maternity")
  assert [b["missing"] for b in blocks] == [[], [{"client_id": maternity.id,
                                                  "reason": "timeout"}]]
  records = [json.loads(l) for l in open(os.path.join(cfg.workdir, "metrics.jsonl"))]
  assert records[1]["valid"] == [False, False, False, True]  # registry order: sampling order
  assert list(records[2]["ledger"]["missing"]) == ["maternity"]
  assert records[2]["valid"] == [True, True, False, False]
  # Round 1 aggregated maternity's update alone (FedAvg with one client: the global is it).
  block1_global = blocks[0]["global_digest"]
  assert L.tree_digest(updates[("maternity", 1)]).hex() == block1_global
  # Receipts: every submission's verdict, signed by the server and matching the ledger.
  for h in HOSPITALS:
    state = enrolment.nodes[h].state_dir
    receipts = [json.load(open(p)) for p in sorted(glob.glob(f"{state}/receipts/*.json"))]
    check = L.verify_ledger(ledger_path, server_public_key=server_pk,
                            receipts=f"{state}/receipts")
    assert check.ok and check.receipts == len(receipts), (h, check)
    verdicts = [r["verdict"] for r in receipts]
    expected = {"cardiology": ["bad_signature", "accepted"],
                "oncology": ["digest_mismatch", "accepted"],
                "trauma": ["unregistered", "unregistered"], "maternity": ["accepted"]}[h]
    # (maternity's receipt came with the request to co-sign block 1; silent since round 2)
    assert verdicts == expected, h
    # a rejected update never becomes the node's client state
    expected = {"cardiology": ["committed_000002"], "oncology": ["committed_000002"],
                "trauma": [], "maternity": ["committed_000001"]}[h]
    assert sorted(os.listdir(os.path.join(state, "client_state"))) == [
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
    receipts = [json.load(open(p)) for p in sorted(glob.glob(f"{state}/receipts/*.json"))]
    assert [(r["round"], r["verdict"]) for r in receipts] == [(1, "accepted"), (2, "accepted")]
    check = L.verify_ledger(ledger_path, server_public_key=ledger.server.pk,
                            receipts=f"{state}/receipts")
    assert check.ok and check.receipts == 2, (h, check)
    committed = sorted(n for n in os.listdir(os.path.join(state, "client_state"))
                       if n.startswith("committed"))
    assert committed == ["committed_000001.npz", "committed_000002.npz"], h


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
