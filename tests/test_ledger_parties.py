"""Parties: each holds its own keystore; trust anchors, receipts, signed counts, cross-run replay."""

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedlora_jax import ledger as L
from fedlora_jax.ledger import identity as identity_module
from fedlora_jax.ledger.ledger import _seal

REPO = Path(__file__).resolve().parents[1]
NAMES = ("cardiology", "oncology", "trauma")
DECLARED = 100  # every hospital's declared dataset size in these tests
RULES = L.make_rules(algorithm="fedavg", clients_per_round=3, cosign="none")


def _digest(i: int, r: int = 1) -> bytes:
  return L.tree_digest({"lora": np.full((2, 3), 10 * r + i, np.float32)})


def _parties(root: Path, names=NAMES, hospitals: Path | None = None, **policy):
  """A server (own keystore) and one signer per hospital (own keystores under `hospitals`,
  default root/hospitals; enrolled there unless already)."""
  hospitals = hospitals or root / "hospitals"
  regs = [L.enroll(n, hospitals / n, DECLARED) for n in names]
  server = L.LedgerServer.open_or_create(root / "ledger.jsonl", root / "server-keys", regs,
                                         label="test-run", rules=RULES, **policy)
  signers = {n: L.HospitalSigner(n, hospitals / n, root / "receipts" / n,
                                 server.server_public_key) for n in names}
  return server, signers


def _round(server, signers, r: int, counts: dict[str, int], deliver: bool = True):
  ctx = server.round_context(r)
  atts = [signers[n].attest(ctx, _digest(i, r), k) for i, (n, k) in enumerate(counts.items())]
  verdict = server.verify(r, [(a, _digest(i, r)) for i, a in enumerate(atts)])
  if deliver:
    for n, receipt in zip(counts, verdict.receipts):
      signers[n].accept_receipt(receipt)
  server.record(r, verdict, _digest(99, r), "fedavg")
  return atts, verdict


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
  return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args],
                        capture_output=True, text=True, env=env, timeout=120)


def test_messages_round_trip_through_json(tmp_path: Path) -> None:
  server, signers = _parties(tmp_path)
  ctx = server.round_context(1)
  att = signers["oncology"].attest(ctx, _digest(1), np.int64(42))
  receipt = server.verify(1, [(att, _digest(1))]).receipts[0]
  for obj in (ctx, att, receipt):
    wire = json.loads(json.dumps(obj.to_dict()))
    assert type(obj).from_dict(wire) == obj
  assert receipt.verdict == L.ACCEPTED and receipt.attestation_hash == att.hash()
  with pytest.raises(L.LedgerError, match="malformed Attestation"):
    L.Attestation.from_dict({**att.to_dict(), "extra": 1})
  with pytest.raises(L.LedgerError, match="malformed Receipt"):
    L.Receipt.from_dict({**receipt.to_dict(), "signature": "zz"})


def test_enrolment_keys_are_random_private_and_reused(tmp_path: Path) -> None:
  a = L.enroll("cardiology", tmp_path / "a", 10)
  b = L.enroll("cardiology", tmp_path / "b", 10)
  assert a.pk != b.pk and a.verify() and b.verify()  # same name, fresh randomness
  assert L.enroll("cardiology", tmp_path / "a", 10) == a  # created once, reused
  assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
  assert stat.S_IMODE((tmp_path / "a" / "cardiology.key").stat().st_mode) == 0o600
  out = _script("enroll.py", "--name=trauma", f"--keystore={tmp_path / 'c'}",
                "--num_samples=42", f"--out={tmp_path / 'reg.json'}")
  assert out.returncode == 0, out.stderr
  record = json.loads((tmp_path / "reg.json").read_text())
  assert set(record) == {"name", "id", "pk", "pop", "num_samples", "binding"}
  assert record["name"] == "trauma" and record["num_samples"] == 42
  assert L.Registration.from_dict(record) == L.enroll("trauma", tmp_path / "c", 42)
  again = _script("enroll.py", "--name=trauma", f"--keystore={tmp_path / 'c'}",
                  "--num_samples=42", f"--out={tmp_path / 'reg.json'}")
  assert again.returncode == 1 and "File exists" in again.stderr  # never overwritten
  bad = _script("enroll.py", "--name=../x", f"--keystore={tmp_path / 'd'}", "--num_samples=1")
  assert bad.returncode == 1 and "invalid identity name" in bad.stderr


def test_registry_refuses_bad_pop_repeated_name_and_malformed_lines(tmp_path: Path) -> None:
  regs = [L.enroll(n, tmp_path / n, DECLARED) for n in NAMES]
  path = tmp_path / "registry.jsonl"
  path.write_text("".join(L.registry_line(r) + "\n" for r in regs) + "\n")
  assert L.load_registry(path) == regs
  swapped = dataclasses.replace(regs[0], pop=regs[1].pop)
  cases = {
      "proof of possession does not verify": [swapped],
      "name already registered": [regs[0], L.enroll("cardiology", tmp_path / "other", 1)],
      "public key already registered": [regs[0], dataclasses.replace(regs[0], name="x")],
      "name, key and declared size are not bound": [dataclasses.replace(regs[0], num_samples=7)],
  }
  for reason, records in cases.items():
    path.write_text("".join(L.registry_line(r) + "\n" for r in records))
    with pytest.raises(L.RegistrationError, match=f"{reason}.*registry.jsonl:{len(records)}"):
      L.load_registry(path)
  path.write_text(L.registry_line(regs[0]) + "\n{not json\n")
  with pytest.raises(L.LedgerError, match="registry.jsonl:2"):
    L.load_registry(path)
  with pytest.raises(L.LedgerError, match="no registry file"):
    L.load_registry(tmp_path / "missing.jsonl")


def test_server_never_opens_a_hospital_keystore(tmp_path: Path, monkeypatch) -> None:
  regs = [L.enroll(n, tmp_path / "hospitals" / n, DECLARED) for n in NAMES]
  opened = []
  real_load = identity_module.Identity.load.__func__
  monkeypatch.setattr(identity_module.Identity, "load", classmethod(
      lambda cls, keystore, name, backend=None: opened.append(Path(keystore)) or real_load(
          cls, keystore, name, backend)))
  server = L.LedgerServer.open_or_create(tmp_path / "ledger.jsonl", tmp_path / "server-keys",
                                         regs, label="x", rules=RULES)
  server_loads, opened[:] = list(opened), []
  signers = {n: L.HospitalSigner(n, tmp_path / "hospitals" / n, tmp_path / "receipts" / n,
                                 server.server_public_key) for n in NAMES}
  assert sorted(opened) == sorted(tmp_path / "hospitals" / n for n in NAMES)
  ctx = server.round_context(1)
  subs = [(signers[n].attest(ctx, _digest(i), 5), _digest(i)) for i, n in enumerate(NAMES)]
  opened.clear()
  verdict = server.verify(1, subs)
  server.record(1, verdict, _digest(9), "fedavg")
  L.LedgerServer.open_or_create(tmp_path / "ledger.jsonl", tmp_path / "server-keys", regs,
                                label="x", rules=RULES)  # resume
  assert server_loads and set(server_loads + opened) == {tmp_path / "server-keys"}


def test_fabricated_ledger_fails_every_anchor(tmp_path: Path) -> None:
  genuine, signers = _parties(tmp_path / "genuine")
  _round(genuine, signers, 1, dict.fromkeys(NAMES, 10))
  fake, fake_signers = _parties(tmp_path / "fake")  # fresh keys, same structure
  _round(fake, fake_signers, 1, dict.fromkeys(NAMES, 10))
  regs = [L.enroll(n, tmp_path / "genuine" / "hospitals" / n, DECLARED) for n in NAMES]
  (tmp_path / "registry.jsonl").write_text("".join(L.registry_line(r) + "\n" for r in regs))
  info = genuine.info()
  anchors = {"server_public_key": info["server_public_key"],
             "genesis_hash": info["genesis_hash"], "registry": str(tmp_path / "registry.jsonl")}
  assert L.verify_ledger(fake.path).ok  # self-consistent
  assert L.find_provenance(fake.path, _digest(99)).round == 1  # names invented contributors...
  for pinned in ({"server_public_key": info["server_public_key"]},
                 {"genesis_hash": info["genesis_hash"]}):  # ...unless the anchors are pinned
    with pytest.raises(L.LedgerError, match="does not match the pinned"):
      L.find_provenance(fake.path, _digest(99), **pinned)
  assert L.find_provenance(genuine.path, _digest(99), server_public_key=info[
      "server_public_key"], genesis_hash=info["genesis_hash"]).contributors[0].name == NAMES[0]
  assert L.verify_ledger(genuine.path, **anchors).ok
  reasons = {"server_public_key": "server key", "genesis_hash": "genesis hash",
             "registry": "'cardiology' is not in the registry"}
  for flag, value in anchors.items():
    result = L.verify_ledger(fake.path, **{flag: value})
    assert not result.ok and result.first_bad_block == 0 and reasons[flag] in result.reason
    out = _script("verify_ledger.py", f"--ledger={fake.path}", f"--{flag}={value}")
    assert out.returncode == 1 and out.stdout.startswith("INVALID: block 0: ")
    assert reasons[flag] in out.stdout and len(out.stdout.splitlines()) == 1
  ok = _script("verify_ledger.py", f"--ledger={genuine.path}",
               *(f"--{k}={v}" for k, v in anchors.items()))
  assert ok.returncode == 0 and ok.stdout == "OK: 2 blocks verified\n"
  missing = _script("verify_ledger.py", f"--ledger={genuine.path}",
                    f"--registry={tmp_path / 'none.jsonl'}")
  assert missing.returncode == 2 and "no registry file" in missing.stderr


def test_cross_run_replay_is_rejected_and_recorded(tmp_path: Path) -> None:
  """Two runs of the same config and the same enrolled hospitals: different ledger ids."""
  run_a, signers_a = _parties(tmp_path / "a", hospitals=tmp_path / "hospitals")
  run_b, _ = _parties(tmp_path / "b", hospitals=tmp_path / "hospitals")
  for server in (run_a, run_b):  # the same hospitals' keys in both runs
    assert server.ledger.ledger_id.startswith("test-run:")
    assert {c.pk for c in server.ledger.clients.values()} == {
        L.enroll(n, tmp_path / "hospitals" / n, DECLARED).pk for n in NAMES}
  assert run_a.ledger.ledger_id != run_b.ledger.ledger_id
  atts_a, _ = _round(run_a, signers_a, 1, dict.fromkeys(NAMES, 10), deliver=False)
  verdict = run_b.verify(1, [(a, _digest(i)) for i, a in enumerate(atts_a)])
  assert list(verdict.outcomes) == ["replay"] * 3 and not verdict.accept.any()
  block = run_b.record(1, verdict, _digest(99), "fedavg")
  assert [(r["reason"], r["attestation_hash"]) for r in block["rejected"]] == [
      ("replay", a.hash()) for a in atts_a]
  assert L.verify_ledger(run_b.path).ok


@pytest.mark.parametrize("cap", [0, 60])
def test_inflated_count_is_capped_by_the_declared_size(tmp_path: Path, cap) -> None:
  """Every hospital declared 100 examples at enrolment (bound by its key): a signed count above
  that is rejected, so no weight inflation by default; `max_samples_per_client` caps further."""
  server, signers = _parties(tmp_path, max_samples_per_client=cap)
  counts = {"cardiology": 50, "oncology": 10 * 50, "trauma": 80}  # oncology signs 10x its 50
  _, verdict = _round(server, signers, 1, counts)
  block = server.recorded_block(1)
  details = {r["client_id"]: r["detail"] for r in block["rejected"]}
  assert details[signers["oncology"].id] == "signed count 500 exceeds the declared dataset size 100"
  if cap:
    assert list(verdict.outcomes) == ["accepted", "over_cap", "over_cap"]
    assert details[signers["trauma"].id] == (
        "signed count 80 exceeds the cap ledger.max_samples_per_client=60")
    assert [p["weight"] for p in block["participants"]] == [1.0]
  else:
    assert list(verdict.outcomes) == ["accepted", "over_cap", "accepted"]
    assert verdict.num_samples.tolist() == [50, 0, 80]
    np.testing.assert_array_equal(verdict.weights, [50 / 130, 0, 80 / 130])
    assert [(p["name"], p["num_samples"], p["weight"]) for p in block["participants"]] == [
        ("cardiology", 50, 50 / 130), ("trauma", 80, 80 / 130)]
  assert L.verify_ledger(server.path).ok


def _resign(server: L.LedgerServer, index: int, edit) -> None:
  """A dishonest server rewrites block `index` (the last) and re-signs it with its own key."""
  lines = server.path.read_text().splitlines()
  block = json.loads(lines[index])
  edit(block)
  del block["server_signature"], block["block_hash"]
  ident = L.Identity.load(server.path.parent / "server-keys", "server")
  lines[index] = _seal(block, server.ledger.ledger_id, ident, server.ledger.backend)[:-1].decode()
  server.path.write_text("\n".join(lines) + "\n")


def test_receipts_catch_an_omitted_or_contradicted_participant(tmp_path: Path) -> None:
  server, signers = _parties(tmp_path)
  atts, verdict = _round(server, signers, 1, dict.fromkeys(NAMES, 10))
  receipts = tmp_path / "receipts"
  assert len(L.load_receipts(receipts)) == 3
  assert L.verify_ledger(server.path, receipts=receipts).receipts == 3
  original = server.path.read_text()

  def omit_oncology(block):
    kept = [(p, a) for p, a in zip(block["participants"], atts) if p["name"] != "oncology"]
    block["participants"] = [p for p, _ in kept]
    block["aggregate_signature"] = server.ledger.backend.aggregate(
        [a.signature for _, a in kept]).hex()
    for p, w in zip(block["participants"], L.weights_of([10, 10], "num_samples")):
      p["weight"] = w

  _resign(server, 1, omit_oncology)
  assert L.verify_ledger(server.path).ok  # structurally fine: only the receipt shows it
  result = L.verify_ledger(server.path, receipts=receipts)
  assert not result.ok and result.first_bad_block == 1
  assert result.reason == "receipt of 'oncology' round 1 (accepted) omitted from the block"
  out = _script("verify_ledger.py", f"--ledger={server.path}", f"--receipts={receipts}")
  assert out.returncode == 1 and "'oncology' round 1 (accepted) omitted" in out.stdout

  server.path.write_text(original)

  def reject_oncology(block):
    omit_oncology(block)
    block["rejected"] = [{"client_id": atts[1].client_id, "reason": "bad_signature",
                          "detail": "made up", "attestation_hash": atts[1].hash()}]

  _resign(server, 1, reject_oncology)
  result = L.verify_ledger(server.path, receipts=receipts)
  assert result.reason == ("receipt of 'oncology' round 1 (accepted) contradicted: the block "
                           "says bad_signature")


def test_signer_checks_receipts_and_torn_tail_is_reported(tmp_path: Path) -> None:
  server, signers = _parties(tmp_path)
  other, _ = _parties(tmp_path / "other")
  ctx = server.round_context(1)
  att = signers["trauma"].attest(ctx, _digest(2), 7)
  verdict = server.verify(1, [(att, _digest(2))])
  forged = other.ledger.verify_round(1, [(att, _digest(2))]).receipts[0]  # another server's key
  with pytest.raises(L.LedgerError, match="not signed by the pinned server key"):
    signers["trauma"].accept_receipt(forged)
  with pytest.raises(L.LedgerError, match="not this hospital"):
    signers["oncology"].accept_receipt(verdict.receipts[0])
  path = signers["trauma"].accept_receipt(verdict.receipts[0])
  assert signers["trauma"].accept_receipt(verdict.receipts[0]) == path  # idempotent
  server.record(1, verdict, _digest(9), "fedavg")
  with server.path.open("ab") as f:
    f.write(b'{"index":2,"kind":"rou')
  out = _script("verify_ledger.py", f"--ledger={server.path}")
  assert out.returncode == 1 and out.stdout.startswith("TORN: a torn trailing line follows "
                                                       "block 1")


def test_residual_digest_is_the_digest_of_the_changed_tensors() -> None:
  original = {"model.layers.0.self_attn.q_proj.weight": np.ones((2, 3), np.float32),
              "model.norm.weight": np.ones(3, np.float32)}
  adapted = {**original, "model.layers.0.self_attn.q_proj.weight": np.full((2, 3), 1.5, "f4")}
  assert L.residual_digest(adapted, original) == L.tree_digest(
      {"model.layers.0.self_attn.q_proj.weight": np.full((2, 3), 0.5, np.float32)})
  assert L.residual_digest(original, original) == L.tree_digest({})
  with pytest.raises(ValueError, match="tensor names differ"):
    L.residual_digest({"a": np.ones(1)}, original)
  with pytest.raises(ValueError, match="float64"):
    L.residual_digest({**original, "model.norm.weight": np.ones(3)}, original)


def _gate(workdir, cfg, names):
  from fedlora_jax.run.gates import LedgerGate  # pylint: disable=import-outside-toplevel
  rules = L.make_rules(algorithm="fedavg", clients_per_round=len(names))
  return LedgerGate(str(workdir), cfg, label="r", rules=rules, train_names=names,
                    train_sizes=[3, 1, 1, 1][:len(names)], local_clients=range(len(names)))


def test_run_parties_from_a_registry(tmp_path: Path) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel

  from tests.fed_fixtures import tiny_model  # pylint: disable=import-outside-toplevel
  keystores = tmp_path / "hospital-keys"
  registry = tmp_path / "registry.jsonl"
  registry.write_text("".join(L.registry_line(L.enroll(n, keystores / n, [3, 1, 1][i])) + "\n"
                              for i, n in enumerate(NAMES)))
  cfg = ml_collections.ConfigDict({"backend": "auto", "registry": str(registry),
                                   "keystores": str(keystores), "max_samples_per_client": 0})
  gate = _gate(tmp_path / "run", cfg, list(NAMES))
  genesis = {r["name"]: r["pk"] for r in gate.server.ledger.blocks[0]["registrations"]}
  assert genesis == {s.name: s.public_key.hex() for s in gate.signers.values()}
  assert gate.signers[2].registration(1) == L.load_registry(registry)[2]
  assert not (tmp_path / "run" / "keys" / "cardiology").exists()  # the enrolled keys are used
  _, _, lora = tiny_model()
  local_c = jax.tree.map(lambda x: np.stack([x, x + 1, x + 2]), lora)  # three clients' updates
  accept, counts = gate.admit(1, np.array([0, 1, 2]), local_c)
  assert accept.tolist() == [True] * 3 and counts.tolist() == [3, 1, 1]  # the signed counts
  info = gate.record(1, lora, None)
  block = gate.server.recorded_block(1)
  assert info["block"] == block["index"] and info["accepted"] == 3
  assert [p["weight"] for p in block["participants"]] == pytest.approx([0.6, 0.2, 0.2])
  assert len(L.load_receipts(tmp_path / "run" / "receipts")) == 3
  with pytest.raises(L.LedgerError, match=r"no registration for \['icu'\]"):
    _gate(tmp_path / "run2", cfg, [*NAMES, "icu"])
  L.enroll("trauma", tmp_path / "elsewhere" / "trauma", 1)
  for n in ("cardiology", "oncology"):
    L.enroll(n, tmp_path / "elsewhere" / n, 1)
  cfg.keystores = str(tmp_path / "elsewhere")
  with pytest.raises(L.LedgerError, match="do not hold the registered keys"):
    _gate(tmp_path / "run3", cfg, list(NAMES))


def test_receipt_accepted_by_a_fresh_signer_of_the_same_hospital(tmp_path: Path) -> None:
  """Under Flower every message runs in a new process: the signer that takes the receipt is not
  the one that attested, and knows the attestation from `<receipts_dir>/issued.jsonl` only."""
  server, signers = _parties(tmp_path)
  ctx = server.round_context(1)
  att = signers["trauma"].attest(ctx, _digest(2), 7)
  verdict = server.verify(1, [(att, _digest(2))])
  issued = (tmp_path / "receipts" / "trauma" / "issued.jsonl").read_text().splitlines()
  assert [L.Attestation.from_dict(json.loads(line)) for line in issued] == [att]
  fresh = L.HospitalSigner("trauma", tmp_path / "hospitals" / "trauma",
                           tmp_path / "receipts" / "trauma", server.server_public_key)
  path = fresh.accept_receipt(verdict.receipts[0])
  assert L.Receipt.from_dict(json.loads(path.read_text())) == verdict.receipts[0]
  assert [r for _, r in L.load_receipts(tmp_path / "receipts")] == [verdict.receipts[0]]
  other = L.HospitalSigner("trauma", tmp_path / "hospitals" / "trauma", tmp_path / "elsewhere",
                           server.server_public_key)  # knows no attestation of this round
  with pytest.raises(L.LedgerError, match="did not issue"):
    other.accept_receipt(verdict.receipts[0])


def test_a_round_whose_block_was_written_is_replayed_not_recorded_again(tmp_path: Path) -> None:
  """The server crashed after writing round 1's block: on resume the round's submissions are
  taken with the block's signed counts (each participant once, nobody else), the block is not
  written again, and a recomputed global adapter, residual or privacy field that differs from
  the block's refuses the resume."""
  server, signers = _parties(tmp_path)
  atts, _ = _round(server, signers, 1, {"cardiology": 10, "oncology": 20})
  lines = server.path.read_bytes()
  server, _ = _parties(tmp_path)  # resumed: the ledger as the crash left it
  ctx = server.round_context(1)
  trauma = signers["trauma"].attest(ctx, _digest(2), 30)  # not a participant of the block
  subs = [(atts[1], _digest(1)), (trauma, _digest(2)), (atts[0], _digest(0)),
          (atts[0], _digest(0))]
  admission = server.verify_or_replay(1, subs)
  assert admission.verdict is None and admission.receipts == ()
  assert admission.accept.tolist() == [True, False, True, False]
  assert admission.num_samples.tolist() == [20, 0, 10, 0]
  block = server.record_or_check(1, admission, _digest(99), "fedavg")
  assert block == server.recorded_block(1) and server.path.read_bytes() == lines
  for change, field in (({"global_digest": _digest(98)}, "global_digest"),
                        ({"residual_digest": _digest(97)}, "residual_digest"),
                        ({"privacy": {"epsilon": 1.0}}, "privacy")):
    with pytest.raises(L.LedgerError, match=f"round 1: recomputed {field} differs"):
      server.record_or_check(1, admission, **{"global_digest": _digest(99),
                                              "algorithm": "fedavg", **change})
  assert server.path.read_bytes() == lines
  _, verdict = _round(server, signers, 2, dict.fromkeys(NAMES, 5))  # then on as usual
  admission = server.verify_or_replay(3, [])
  assert admission.recorded is None and admission.verdict.round == 3
  assert [b["round"] for b in server.ledger.blocks if b["kind"] == "round"] == [1, 2]
  result = L.verify_ledger(server.path, receipts=tmp_path / "receipts", allow_open=True)
  assert result.ok and result.receipts == 5, result


def test_the_simulation_replays_a_round_recorded_before_a_crash(tmp_path: Path) -> None:
  """`LedgerGate` (the simulation) after a crash between round 1's block and its checkpoint: a
  new gate over the same run directory re-runs round 1 with the block's signed counts, returns
  the same record without a second block, and refuses a global adapter that is not the
  block's."""
  import jax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel

  from tests.fed_fixtures import tiny_model  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict({"backend": "auto", "registry": "", "keystores": "",
                                   "max_samples_per_client": 0})
  _, _, lora = tiny_model()
  local_c = jax.tree.map(lambda x: np.stack([x, x + 1, x + 2]), lora)
  slots = np.array([0, 1, 2])
  gate = _gate(tmp_path, cfg, list(NAMES))
  accept, counts = gate.admit(1, slots, local_c)
  first = gate.record(1, lora, None)
  ledger = tmp_path / "ledger.jsonl"
  written = ledger.read_bytes()
  for _ in range(2):  # the crash, then the resume: twice, the second after a complete replay
    gate = _gate(tmp_path, cfg, list(NAMES))
    again = gate.admit(1, slots, local_c)
    assert again[0].tolist() == accept.tolist() and again[1].tolist() == counts.tolist()
    assert gate.record(1, lora, None) == first and ledger.read_bytes() == written
  gate = _gate(tmp_path, cfg, list(NAMES))
  gate.admit(1, slots, local_c)
  other = jax.tree.map(lambda x: x + 1, lora)
  with pytest.raises(L.LedgerError, match="round 1: recomputed global_digest differs"):
    gate.record(1, other, None)
  assert ledger.read_bytes() == written
  gate.admit(2, slots, local_c)
  assert gate.record(2, other, None)["block"] == first["block"] + 1
  gate.close()
  result = L.verify_ledger(ledger, receipts=tmp_path / "receipts")
  assert result.ok and result.receipts == 6, result
  assert [b["round"] for b in L.Ledger.open(ledger).blocks if b["kind"] == "round"] == [1, 2]
