"""A ledger that holds the server to account: each attack of issue 23, played with the server's
real key, fails pinned verification with its exact reason; the honest run verifies from every
hospital's replica."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedlora_jax import ledger as L
from fedlora_jax.ledger.ledger import _seal

REPO = Path(__file__).resolve().parents[1]
NAMES = ("cardiology", "oncology", "trauma")
SIZES = {"cardiology": 30, "oncology": 120, "trauma": 50}  # declared dataset sizes


def _digest(tag: str, r: int) -> bytes:
  return L.tree_digest({"lora": np.full((2, 3), hash((tag, r)) % 1000, np.float32)})


@dataclasses.dataclass
class Run:
  """A server with its own keystore, three hospitals with theirs, the pinned anchors."""

  root: Path
  server: L.LedgerServer
  signers: dict[str, L.HospitalSigner]

  @property
  def path(self) -> Path:
    return self.server.path

  @property
  def anchors(self) -> dict[str, str]:
    return {k: self.server.info()[k] for k in ("server_public_key", "genesis_hash")}

  @property
  def receipts(self) -> Path:
    return self.root / "receipts"

  def replicas(self) -> list[Path]:
    return [s.replica.path for s in self.signers.values()]

  def round(self, r: int, *, drop: tuple[str, ...] = (), counts: dict[str, int] | None = None,
            global_digest: bytes | None = None, cosign: bool = True) -> dict:
    """Round r: every hospital attests; the server verifies those not in `drop` (recorded
    missing: timeout), records, and collects the participants' co-signatures."""
    ctx = self.server.round_context(r)
    atts = {n: s.attest(ctx, _digest(n, r), (counts or SIZES)[n]) for n, s in self.signers.items()}
    kept = [n for n in NAMES if n not in drop]
    verdict = self.server.verify(r, [(atts[n], _digest(n, r)) for n in kept])
    for n, receipt in zip(kept, verdict.receipts):
      self.signers[n].accept_receipt(receipt)
    g = global_digest or _digest("global", r)
    block = self.server.record(r, verdict, g, "fedavg",
                               missing=[(self.signers[n].id, "timeout") for n in drop])
    if cosign:
      self.cosign([p["name"] for p in block["participants"]], {n: _digest("global", r)
                                                                for n in NAMES})
    return block

  def cosign(self, names, received: dict[str, bytes]) -> dict:
    answers = [self.signers[n].cosign(self.server.blocks_since(len(self.signers[n].replica)),
                                      received[n]) for n in names]
    return self.server.add_cosignatures(answers)

  def close(self) -> None:
    self.server.ledger.close()
    for s in self.signers.values():
      s.receive(self.server.blocks_since(len(s.replica)))

  def verify(self, **kw) -> L.VerifyResult:
    return L.verify_ledger(self.path, **self.anchors, **kw)

  def resign(self, index: int, edit) -> None:
    """The server rewrites block `index` with `edit` and re-seals it and every later block
    (re-linked) with its own real key."""
    lines = self.path.read_text().splitlines()
    ident = L.Identity.load(self.root / "server-keys", "server")
    prev = json.loads(lines[index - 1])["block_hash"]
    for i in range(index, len(lines)):
      block = json.loads(lines[i])
      if i == index:
        edit(block)
      block["prev_hash"] = prev
      del block["server_signature"], block["block_hash"]
      line = _seal(block, self.server.ledger.ledger_id, ident, self.server.ledger.backend)
      lines[i] = line[:-1].decode()
      prev = block["block_hash"]
    self.path.write_text("\n".join(lines) + "\n")

  def append_forged(self, block: dict) -> None:
    """The server appends a block of its own making, signed with its real key."""
    lines = self.path.read_text().splitlines()
    block = {**block, "index": len(lines), "prev_hash": json.loads(lines[-1])["block_hash"]}
    ident = L.Identity.load(self.root / "server-keys", "server")
    line = _seal(block, self.server.ledger.ledger_id, ident, self.server.ledger.backend)
    self.path.write_text(self.path.read_text() + line.decode())


def _start(root: Path, **rule_changes) -> Run:
  regs = [L.enroll(n, root / "hospitals" / n, SIZES[n]) for n in NAMES]
  rules = L.make_rules(**{"algorithm": "fedavg", "clients_per_round": 3, **rule_changes})
  server = L.LedgerServer.open_or_create(root / "ledger.jsonl", root / "server-keys", regs,
                                         label="accountability", rules=rules)
  signers = {n: L.HospitalSigner(n, root / "hospitals" / n, root / "receipts" / n,
                                 server.server_public_key, genesis_hash=server.genesis_hash)
             for n in NAMES}
  return Run(root, server, signers)


@pytest.fixture
def honest(tmp_path: Path) -> Run:
  """Two co-signed rounds and the closing block."""
  run = _start(tmp_path)
  run.round(1)
  run.round(2)
  run.close()
  return run


def test_honest_run_verifies_from_every_replica(honest: Run) -> None:
  result = honest.verify(receipts=honest.receipts / "oncology", issued=honest.receipts,
                         replicas=honest.replicas())
  assert result.ok and result.closed and result.disputes == () and result.refusals == ()
  blocks = [json.loads(x) for x in honest.path.read_text().splitlines()]
  assert [b["kind"] for b in blocks] == ["genesis", "round", "round", "close"]
  assert [len(b["cosignature"]["signers"]) for b in blocks[2:]] == [3, 3]
  assert [p["weight"] for p in blocks[1]["participants"]] == [30 / 200, 120 / 200, 50 / 200]
  for replica in honest.replicas():
    assert replica.read_bytes() == honest.path.read_bytes()
    assert L.verify_ledger(replica, **honest.anchors).ok


def test_last_block_edits_fail_on_the_rules_or_the_closing_cosignature(honest: Run) -> None:
  """Attack 1: the server edits the newest round block and re-signs the chain from there."""
  original = honest.path.read_text()

  def uniform(block):
    block["weighting"] = "uniform"
    for p in block["participants"]:
      p["weight"] = 1 / 3

  honest.resign(2, uniform)
  assert honest.verify().reason == "weighting 'uniform' is not the genesis rules' 'num_samples'"
  made_up = [{"client_id": "x", "reason": "bad_signature", "detail": "made up",
              "attestation_hash": "ab" * 32}]
  for field, value in (("global_digest", "ab" * 32), ("rejected", made_up)):
    honest.path.write_text(original)
    honest.resign(2, lambda b: b.update({field: value}))
    result = honest.verify()
    assert (result.first_bad_block, result.reason) == (3, "co-signature of block 2 does not verify")
  honest.path.write_text(original)
  honest.path.write_text("".join(original.splitlines(keepends=True)[:3]))  # drop the close
  result = honest.verify()
  assert (result.first_bad_block, result.reason) == (2, (
      "no closing block after the head block (round 2): a run in progress, interrupted or cut "
      "back (allow_open accepts a run in progress)"))
  assert honest.verify(allow_open=True).ok
  # Cut back to the genesis: no round is left to need a co-signature, the missing close shows it.
  honest.path.write_text(original.splitlines(keepends=True)[0])
  result = honest.verify()
  assert (result.ok, result.first_bad_block) == (False, 0)
  assert result.reason.startswith("no closing block after the head block (genesis)")


def test_server_cannot_enrol_a_member_alone(honest: Run, tmp_path: Path) -> None:
  """Attack 2: a registration block after genesis without the members' majority approval."""
  lines = honest.path.read_text().splitlines(keepends=True)
  honest.path.write_text("".join(lines[:3]))  # before the close
  fake = L.enroll("ghost", tmp_path / "ghost", 10**6)
  server_sig = L.Identity.load(honest.root / "server-keys", "server").sign(b"approve")
  honest.append_forged({
      "kind": "register", "registrations": [fake.to_dict()], "removals": [],
      "cosignature": json.loads(lines[3])["cosignature"],
      "approval": {"signers": [], "signature": server_sig.hex()}})
  result = honest.verify(allow_open=True)
  assert (result.first_bad_block, result.reason) == (
      3, "registration after genesis approved by 0 of 3 members, not a majority")
  with pytest.raises(L.LedgerError, match="majority of the 3 members, got 1"):
    honest.server.ledger.register([fake], [(honest.signers["trauma"].id, b"")])


def test_members_approve_joins_redeclarations_and_leaves_by_majority(tmp_path: Path) -> None:
  run = _start(tmp_path)
  ledger = run.server.ledger

  def approve(names, regs, removals=()):
    message = ledger.membership_message(regs, removals)
    return [(run.signers[n].id, run.signers[n].approve(message)) for n in names]

  late = L.enroll("pediatrics", tmp_path / "hospitals" / "pediatrics", 40)
  block = ledger.register([late], approve(NAMES[:2], [late]))
  assert block["approval"]["signers"] == [run.signers[n].id for n in NAMES[:2]]
  assert ledger.declared[late.id] == 40
  more = L.enroll("oncology", tmp_path / "hospitals" / "oncology", 500)  # re-declares its size
  with pytest.raises(L.LedgerError, match="majority of the 4 members, got 2"):
    ledger.register([more], approve(NAMES[:2], [more]))
  ledger.register([more], approve(NAMES, [more]))
  assert ledger.declared[more.id] == 500 and len(ledger.clients) == 4
  trauma = run.signers["trauma"].id
  ledger.register([], approve(NAMES, [], [trauma]), removals=[trauma])
  assert trauma not in ledger.clients and run.verify(allow_open=True).ok
  ctx = ledger.round_context(1)
  atts = [run.signers[n].attest(ctx, _digest(n, 1), c) for n, c in (("oncology", 500),
                                                                      ("trauma", 50))]
  verdict = ledger.verify_round(1, [(a, _digest(n, 1)) for a, n in zip(atts, ("oncology",
                                                                              "trauma"))])
  assert list(verdict.outcomes) == ["accepted", "unregistered"]  # the leaver takes no part
  fake = L.enroll("ghost", tmp_path / "ghost", 10)
  run.resign(1, lambda b: b.update(registrations=[fake.to_dict()]))
  result = run.verify()
  assert (result.first_bad_block, result.reason) == (1, "members' approval signature does not "
                                                     "verify")


def test_registration_binds_name_key_and_declared_size(tmp_path: Path) -> None:
  """Attack 3: names swapped between keys, or a declared size changed, in a registry or in a
  re-signed genesis block."""
  regs = [L.enroll(n, tmp_path / n, SIZES[n]) for n in NAMES]
  swapped = [dataclasses.replace(regs[0], name=regs[1].name),
             dataclasses.replace(regs[1], name=regs[0].name)]
  registry = tmp_path / "registry.jsonl"
  registry.write_text("".join(L.registry_line(r) + "\n" for r in swapped))
  with pytest.raises(L.RegistrationError, match="'oncology' refused: name, key and declared size "
                     "are not bound by the key's signature"):
    L.load_registry(registry)
  run = _start(tmp_path / "run")

  def swap(block):
    a, b = block["registrations"][:2]
    a["name"], b["name"] = b["name"], a["name"]

  lines = run.path.read_text().splitlines()
  genesis = json.loads(lines[0])
  swap(genesis)
  genesis["registrations"][2]["num_samples"] = 10**6
  del genesis["server_signature"], genesis["block_hash"]
  ident = L.Identity.load(run.root / "server-keys", "server")
  run.path.write_bytes(_seal(genesis, run.server.ledger.ledger_id, ident, run.server.ledger.backend))
  result = L.verify_ledger(run.path)
  assert (result.first_bad_block, result.reason) == (0, (
      "registration 'oncology': name, key and declared size are not bound by the key's "
      "signature"))


def test_declared_size_caps_the_weight(tmp_path: Path) -> None:
  """Attack 4: an inflated count is rejected by the server; a colluding server that records
  it anyway (re-signed by the hospital and the server) fails verification."""
  run = _start(tmp_path)
  block = run.round(1, counts={**SIZES, "oncology": 10**6}, cosign=False)
  assert [p["name"] for p in block["participants"]] == ["cardiology", "trauma"]
  assert block["rejected"][0]["reason"] == "over_cap"
  assert block["rejected"][0]["detail"] == "signed count 1000000 exceeds the declared dataset size 120"
  run2 = _start(tmp_path / "collusion")
  run2.round(1)
  onc = L.Identity.load(run2.root / "hospitals" / "oncology", "oncology")

  def inflate(block):
    p = block["participants"][1]
    ctx = L.RoundContext(run2.server.ledger.ledger_id, 1, block["prev_hash"])
    att = L.Attestation.create(onc, ctx, bytes.fromhex(p["update_digest"]), 10**6)
    p["num_samples"], p["attestation_hash"] = 10**6, att.hash()
    counts = [x["num_samples"] for x in block["participants"]]
    for x, w in zip(block["participants"], L.weights_of(counts, "num_samples")):
      x["weight"] = w

  run2.resign(1, inflate)
  result = run2.verify(allow_open=True)
  assert (result.first_bad_block, result.reason) == (1, (
      "participant 'oncology': signed count 1000000 exceeds its declared dataset size 120"))


def test_omission_by_silence_is_a_dispute(tmp_path: Path) -> None:
  """Attack 5: the server drops oncology's signed submission and records it missing."""
  run = _start(tmp_path)
  run.round(1, drop=("oncology",))
  run.close()
  assert run.verify(replicas=run.replicas()).ok  # the chain alone cannot show it
  result = run.verify(issued=run.receipts)
  att = L.load_issued(run.receipts / "oncology")[0]
  assert not result.ok and len(result.disputes) == 1
  assert result.disputes[0] == (
      f"'oncology' signed attestation {att.hash()[:16]}... for round 1 (update "
      f"{att.update_digest[:16]}..., 120 samples, head {att.prev_hash[:16]}...); block 1 "
      "records it missing (timeout)")
  assert result.reason == f"1 dispute(s); first: {result.disputes[0]}"
  env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
  anchors = [f"--{k}={v}" for k, v in run.anchors.items()]
  out = subprocess.run([sys.executable, str(REPO / "scripts" / "verify_ledger.py"),
                        f"--ledger={run.path}", *anchors, f"--issued={run.receipts}"],
                       capture_output=True, text=True, env=env, timeout=120)
  assert out.returncode == 1 and out.stdout.splitlines() == [
      f"INVALID: block 2: {result.reason}", f"dispute: {result.disputes[0]}"]
  replicas = [f"--replica={p}" for p in run.replicas()]
  out = subprocess.run([sys.executable, str(REPO / "scripts" / "verify_ledger.py"),
                        f"--ledger={run.path}", *anchors, *replicas],
                       capture_output=True, text=True, env=env, timeout=120)
  assert out.returncode == 0 and out.stdout == (
      "OK: 3 blocks verified, 3 replicas agree\nround 1: oncology missing (timeout)\n")


def test_receipts_of_another_ledger_or_none_fail(honest: Run, tmp_path: Path) -> None:
  """Attack 6: a fabricated ledger with the genuine receipts and no pinned genesis."""
  fake = _start(tmp_path / "fabricated")
  fake.round(1)
  fake.close()
  result = L.verify_ledger(fake.path, receipts=honest.receipts / "oncology")
  assert not result.ok and result.reason.startswith("receipt ") and result.reason.endswith(
      f"is for ledger {honest.server.ledger.ledger_id!r}, not this ledger "
      f"{fake.server.ledger.ledger_id!r}")
  empty = tmp_path / "empty"
  empty.mkdir()
  assert L.verify_ledger(honest.path, receipts=empty).reason == (
      "no receipt to check in the receipts directory")
  assert L.verify_ledger(fake.path, issued=honest.receipts).reason == (
      f"no attestation issued for this ledger ({fake.server.ledger.ledger_id}) under "
      f"{honest.receipts}")


@pytest.mark.parametrize("rule,weights", [
    (dict(robust_rule="median"), [None, None, None]),
    (dict(privacy_unit="client", delta=1e-5, noise_multiplier=1.0, clients_per_round=4),
     [0.25, 0.25, 0.25]),
])
def test_recorded_weights_are_the_applied_ones(tmp_path: Path, rule, weights) -> None:
  """Attack 7: under a robust rule or DP the block records what was applied, and the genesis
  rule is the only one that verifies."""
  run = _start(tmp_path, **rule)
  privacy = None
  if "privacy_unit" in rule:
    privacy = {"unit": "client", "epsilon": 0.5, "delta": 1e-5, "noise_multiplier": 1.0,
               "clip": 0.7, "accountant": "rdp"}
  ctx = run.server.round_context(1)
  subs = [(s.attest(ctx, _digest(n, 1), SIZES[n]), _digest(n, 1)) for n, s in run.signers.items()]
  block = run.server.record(1, run.server.verify(1, subs), _digest("global", 1), "fedavg",
                            privacy=privacy)
  assert [p["weight"] for p in block["participants"]] == weights
  assert block["robust"] == run.server.ledger.rules["robust"]

  def sample_weights(b):
    for p, w in zip(b["participants"], L.weights_of([30, 120, 50], "num_samples")):
      p["weight"] = w

  run.resign(1, sample_weights)
  what = ("median (no per-client weight)" if "robust_rule" in rule else "DP-FedAvg 1/4")
  assert run.verify(allow_open=True).reason == (
      f"weights are not the {what} weights the genesis rules give the signed sample counts")


def test_refusals_are_recorded_and_a_disputed_block_stops_the_run(tmp_path: Path) -> None:
  run = _start(tmp_path)
  run.round(1, cosign=False)
  received = {n: _digest("global", 1) for n in NAMES}
  received["trauma"] = _digest("other", 1)  # trauma gets another global than recorded
  cosig = run.cosign(NAMES, received)
  trauma = run.signers["trauma"].id
  reason = "the recorded global digest is not the digest of the global adapter received"
  assert cosig["refused"] == [{"client_id": trauma, "reason": reason}]
  run.close()
  result = run.verify(replicas=run.replicas())
  assert result.ok and result.refusals == ((1, "trauma", reason),)
  run2 = _start(tmp_path / "disputed")
  run2.round(1, cosign=False, global_digest=_digest("forged", 1))
  with pytest.raises(L.LedgerError, match=r"round 1: only 0 of 3 participants co-signed block 1 "
                     r"\(cardiology: the recorded global digest"):
    run2.cosign(NAMES, {n: _digest("global", 1) for n in NAMES})
  with pytest.raises(L.LedgerError, match="block 1 awaits its participants' co-signature"):
    run2.server.ledger.close()


def test_replicas_name_the_first_divergence(honest: Run) -> None:
  """A server that forks its file after the hospitals received a block (the newest round,
  re-signed with another global digest), or cuts the ledger back, is caught by every hospital's
  copy, at the first block that differs."""
  lines = honest.path.read_text().splitlines(keepends=True)
  honest.path.write_text("".join(lines[:3]))
  honest.resign(2, lambda b: b.update(global_digest="cd" * 32))
  assert honest.verify(allow_open=True).ok  # consistent on its own
  first = honest.replicas()[0]
  result = honest.verify(replicas=honest.replicas(), allow_open=True)
  assert (result.first_bad_block, result.reason) == (
      2, f"replica {first} diverges from the ledger at block 2")
  blocks = [json.loads(x) for x in honest.path.read_text().splitlines()]
  with pytest.raises(L.LedgerError, match="block 2 differs from this hospital's copy"):
    honest.signers["oncology"].receive(blocks)
  honest.path.write_text("".join(lines[:2]))
  assert honest.verify(replicas=[first], allow_open=True).reason == (
      f"replica {first} holds block 2 that the ledger lacks (4 blocks vs 2: the ledger was cut "
      "back)")


def test_pending_cosignature_survives_a_restart(tmp_path: Path) -> None:
  run = _start(tmp_path)
  run.round(1)
  regs = [L.enroll(n, tmp_path / "hospitals" / n, SIZES[n]) for n in NAMES]
  reopened = L.LedgerServer.open_or_create(run.path, tmp_path / "server-keys", regs, label="x",
                                           rules=run.server.ledger.rules)
  assert not reopened.ledger.cosignature_due
  reopened.ledger.close()
  assert L.verify_ledger(reopened.path).ok


def test_old_format_is_refused_in_one_line(honest: Run) -> None:
  lines = honest.path.read_text().splitlines()
  genesis = json.loads(lines[0])
  genesis["version"] = 3
  honest.path.write_text(json.dumps(genesis, sort_keys=True, separators=(",", ":")) + "\n")
  assert L.verify_ledger(honest.path).reason == (
      "ledger format version 3 is not supported (this code reads format version 4 only)")


def test_backends_cosign_byte_identically(tmp_path: Path) -> None:
  sk = L.key_gen(b"k" * 32)
  message = L.cosign_message("run:" + "00" * 32, 3, "ab" * 32)
  outputs = {name: L.get_backend(name).sign(sk, message) for name in ("py_ecc", "arkworks",
                                                                      "blspy")
             if L.backend_available(name)}
  assert len(set(outputs.values())) == 1
  pk = L.get_backend("py_ecc").sk_to_pk(sk)
  for name in outputs:
    backend = L.get_backend(name)
    assert backend.fast_aggregate_verify([pk, pk], message, backend.aggregate(
        [outputs[name]] * 2))
    assert not backend.fast_aggregate_verify([pk], message, backend.aggregate([outputs[name]] * 2))
