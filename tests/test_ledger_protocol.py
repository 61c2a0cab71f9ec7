"""Round protocol: registration with PoP, attestations, every attack rejected with its reason."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from py_ecc.bls.g2_primitives import G1_to_pubkey, pubkey_to_G1
from py_ecc.optimized_bls12_381 import G1, add, multiply, neg

from fedlora_jax.ledger import (
    Attestation, Identity, Ledger, LedgerError, Registration, RegistrationError, Rejection,
    backend_available, get_backend, tree_digest, verify_ledger,
)
from fedlora_jax.ledger.bls import Backend
from tests.ledger_fixtures import create_ledger, join

needs_arkworks = pytest.mark.skipif(not backend_available("arkworks"),
                                    reason="py-arkworks-bls12381 not installed")
BACKENDS = ["py_ecc", pytest.param("arkworks", marks=needs_arkworks)]
SEED = b"fedlora-jax ledger protocol test"  # 32 bytes


def _update(i: int, r: int) -> dict:
  return {"lora": {"a": np.full((2, 2), 10 * r + i, np.float32)}}


def _setup(tmp_path: Path, backend: Backend, n: int) -> tuple[Ledger, list[Identity]]:
  server = Identity.generate("server", SEED, backend)
  clients = [Identity.generate(f"client{i}", SEED, backend) for i in range(n)]
  ledger = create_ledger(tmp_path / "ledger.jsonl", "test-run", server, clients, backend)
  return ledger, clients


def _attest(ledger: Ledger, client: Identity, r: int, update: dict, n: int = 10) -> Attestation:
  return Attestation.create(client, ledger.round_context(r), tree_digest(update), n, ledger.backend)


def _reasons(rejected: list[Rejection]) -> list[tuple[str, str]]:
  return [(rej.client_id, rej.reason) for rej in rejected]


def _verify(ledger: Ledger, r: int, submissions, **policy) -> tuple[list, list]:
  verdict = ledger.verify_round(r, submissions, **policy)
  return list(verdict.accepted), list(verdict.rejected)


@pytest.mark.parametrize("name", BACKENDS)
def test_two_rounds_with_every_attack(tmp_path: Path, name: str) -> None:
  """The whole protocol on each backend (two clients: py_ecc needs ~0.5 s per verification)."""
  backend = get_backend(name)
  ledger, (c0, c1) = _setup(tmp_path, backend, 2)
  ups = [_update(i, 0) for i in range(2)]
  atts0 = [_attest(ledger, c, 0, u, 10 + i) for i, (c, u) in enumerate(zip((c0, c1), ups))]
  verdict = ledger.verify_round(0, [(a, tree_digest(u)) for a, u in zip(atts0, ups)])
  assert list(verdict.accepted) == atts0 and verdict.rejected == ()
  np.testing.assert_array_equal(verdict.weights, [10 / 21, 11 / 21])
  ledger.append_round(0, verdict, tree_digest({"g": np.zeros(2)}), "fedavg")

  up0, up1 = _update(0, 1), _update(1, 1)
  stranger = Identity.generate("stranger", SEED, backend)
  honest = _attest(ledger, c0, 1, up0, 5)
  claim = _attest(ledger, c0, 1, up1)
  by_other = dataclasses.replace(claim, client_id=c1.id)  # c1's claim, signed with c0's key
  by_other = dataclasses.replace(by_other, signature=c0.sign(by_other.message(), backend))
  mismatch = _attest(ledger, c1, 1, up1)
  forged = dataclasses.replace(mismatch, signature=stranger.sign(b"x", backend))
  submissions = [
      (honest, tree_digest(up0)),
      (atts0[1], tree_digest(ups[1])),  # replay of round 0
      (mismatch, tree_digest(up0)),  # a different update than the one signed
      (_attest(ledger, stranger, 1, up1), tree_digest(up1)),  # unregistered
      (by_other, tree_digest(up1)),
      (forged, tree_digest(up1)),
      (honest, tree_digest(up0)),  # same client again
  ]
  verdict = ledger.verify_round(1, submissions)
  accepted, rejected = list(verdict.accepted), list(verdict.rejected)
  assert accepted == [honest]
  assert verdict.accept.tolist() == [True] + [False] * 6
  assert verdict.num_samples.tolist() == [5, 0, 0, 0, 0, 0, 0]
  assert [r.verdict for r in verdict.receipts] == ["accepted", *[x.reason for x in rejected]]
  assert all(r.verify(ledger.server.pk, backend) for r in verdict.receipts)
  assert _reasons(rejected) == [
      (c1.id, "replay"), (c1.id, "digest_mismatch"), (stranger.id, "unregistered"),
      (c1.id, "bad_signature"), (c1.id, "bad_signature"), (c0.id, "duplicate_client"),
  ]
  block = ledger.append_round(1, verdict, tree_digest({"g": np.ones(2)}), "fedavg")
  assert block["participants"] == [
      {"client_id": c0.id, "name": "client0", "update_digest": tree_digest(up0).hex(),
       "num_samples": 5, "weight": 1.0, "attestation_hash": honest.hash()}]
  assert [r["reason"] for r in block["rejected"]] == [r.reason for r in rejected]
  assert block["aggregate_signature"] == honest.signature.hex()  # aggregate of one = itself
  result = verify_ledger(ledger.path, backend)
  assert result.ok and result.num_blocks == 3 and not result.torn_tail


@needs_arkworks
def test_backends_write_identical_ledgers(tmp_path: Path) -> None:
  """Keys, PoPs and server signatures are byte-identical, hence so are whole files."""
  files = []
  for name in ("py_ecc", "arkworks"):
    (tmp_path / name).mkdir()
    ledger, _ = _setup(tmp_path / name, get_backend(name), 1)
    files.append(json.loads(ledger.path.read_bytes()))
  # The genesis nonce is fresh per ledger: equal up to the nonce-bearing fields.
  for block in files:
    assert len(block.pop("nonce")) == 64 and block.pop("ledger_id").startswith("test-run:")
    del block["server_signature"], block["block_hash"]
  assert files[0] == files[1]


@pytest.fixture
def fast(tmp_path: Path) -> tuple[Ledger, list[Identity]]:
  return _setup(tmp_path, get_backend("auto"), 3)


def test_forged_signature(fast) -> None:
  ledger, (c0, c1, _) = fast
  good = _attest(ledger, c0, 0, _update(0, 0))
  wrong_msg = dataclasses.replace(good, signature=c0.sign(b"something else", ledger.backend))
  garbage = dataclasses.replace(good, signature=bytes(96))
  short = dataclasses.replace(good, signature=good.signature[:-1])
  inflated = dataclasses.replace(good, num_samples=10**6)  # signed 10 samples
  for bad in (wrong_msg, garbage, short, inflated):
    ok = _attest(ledger, c1, 0, _update(1, 0))
    accepted, rejected = _verify(ledger, 0, [(ok, tree_digest(_update(1, 0))),
                                                 (bad, tree_digest(_update(0, 0)))])
    assert accepted == [ok] and _reasons(rejected) == [(c0.id, "bad_signature")]


def test_signature_by_another_registered_client(fast) -> None:
  ledger, (c0, c1, _) = fast
  claim = _attest(ledger, c1, 0, _update(1, 0))
  stolen = dataclasses.replace(claim, signature=c0.sign(claim.message(), ledger.backend))
  accepted, rejected = _verify(ledger, 0, [(stolen, tree_digest(_update(1, 0)))])
  assert accepted == [] and _reasons(rejected) == [(c1.id, "bad_signature")]


def test_replay_of_previous_round_and_old_block(fast) -> None:
  ledger, (c0, c1, _) = fast
  old = _attest(ledger, c0, 0, _update(0, 0))
  verdict = ledger.verify_round(0, [(old, tree_digest(_update(0, 0)))])
  ledger.append_round(0, verdict, tree_digest(_update(9, 0)), "fedavg")
  stale_head = Attestation.create(c1, dataclasses.replace(ledger.round_context(1),
                                                          prev_hash=old.prev_hash),
                                  tree_digest(_update(1, 1)), 3, ledger.backend)
  accepted, rejected = _verify(ledger, 1, [(old, tree_digest(_update(0, 0))),
                                               (stale_head, tree_digest(_update(1, 1)))])
  assert accepted == [] and _reasons(rejected) == [(c0.id, "replay"), (c1.id, "replay")]
  assert "round 0" in rejected[0].detail and "older block" in rejected[1].detail


def test_digest_mismatch(fast) -> None:
  ledger, (c0, _, _) = fast
  att = _attest(ledger, c0, 0, _update(0, 0))
  tampered = _update(0, 0)
  tampered["lora"]["a"][0, 0] += 1e-3
  accepted, rejected = _verify(ledger, 0, [(att, tree_digest(tampered))])
  assert accepted == [] and _reasons(rejected) == [(c0.id, "digest_mismatch")]


def test_unregistered_key(fast) -> None:
  ledger, _ = fast
  outsider = Identity.generate("outsider", SEED, ledger.backend)
  att = _attest(ledger, outsider, 0, _update(0, 0))
  accepted, rejected = _verify(ledger, 0, [(att, tree_digest(_update(0, 0)))])
  assert accepted == [] and _reasons(rejected) == [(outsider.id, "unregistered")]


def test_duplicate_client(fast) -> None:
  ledger, (c0, _, _) = fast
  first = _attest(ledger, c0, 0, _update(0, 0))
  second = _attest(ledger, c0, 0, _update(5, 0))
  forged_first = dataclasses.replace(first, signature=bytes(96))
  accepted, rejected = _verify(ledger, 0, [(first, tree_digest(_update(0, 0))),
                                               (second, tree_digest(_update(5, 0)))])
  assert accepted == [first] and _reasons(rejected) == [(c0.id, "duplicate_client")]
  # A forged first submission does not shadow the client's genuine one.
  accepted, rejected = _verify(ledger, 0, [(forged_first, tree_digest(_update(0, 0))),
                                               (second, tree_digest(_update(5, 0)))])
  assert accepted == [second] and _reasons(rejected) == [(c0.id, "bad_signature")]


def test_rogue_key_registration_refused(tmp_path: Path) -> None:
  backend = get_backend("auto")
  server = Identity.generate("server", SEED, backend)
  victim = Identity.generate("victim", SEED, backend)
  mallory = Identity.generate("mallory", SEED, backend)
  # Rogue key pk_m - pk_v: the aggregate key of {victim, rogue} is mallory's own key.
  x = int.from_bytes(mallory._sk, "big")
  rogue_pk = G1_to_pubkey(add(multiply(G1, x), neg(pubkey_to_G1(victim.pk))))
  rogue = Registration("mallory", rogue_pk, mallory.pop_prove(backend), 10, bytes(96))
  with pytest.raises(RegistrationError, match="'mallory'.*proof of possession"):
    create_ledger(tmp_path / "l.jsonl", "run", server, [victim, rogue], backend)
  assert not (tmp_path / "l.jsonl").exists()
  ledger = create_ledger(tmp_path / "l.jsonl", "run", server, [victim], backend)
  with pytest.raises(RegistrationError, match="'mallory'.*proof of possession"):
    ledger.register([rogue], [])
  with pytest.raises(RegistrationError, match="'victim2'.*already registered"):
    ledger.register([dataclasses.replace(Registration.of(victim, 10, backend), name="victim2")],
                    [])
  with pytest.raises(RegistrationError, match="'mallory'.*expected a Registration"):
    ledger.register([mallory.public()], [])
  assert len(ledger.blocks) == 1 and verify_ledger(ledger.path).ok


def test_late_registration_then_participation(fast) -> None:
  ledger, members = fast
  late = Identity.generate("late", SEED, ledger.backend)
  join(ledger, members, [late])
  att = _attest(ledger, late, 0, _update(7, 0))
  verdict = ledger.verify_round(0, [(att, tree_digest(_update(7, 0)))])
  ledger.append_round(0, verdict, tree_digest(_update(8, 0)), "fedavg")
  reopened = Ledger.open(ledger.path)
  assert late.id in reopened.clients and reopened.last_round == 0
  assert [b["kind"] for b in reopened.blocks] == ["genesis", "register", "round"]


def test_round_without_valid_client_is_recorded(fast) -> None:
  ledger, (c0, _, _) = fast
  bad = dataclasses.replace(_attest(ledger, c0, 0, _update(0, 0)), signature=bytes(96))
  verdict = ledger.verify_round(0, [(bad, tree_digest(_update(0, 0)))])
  block = ledger.append_round(0, verdict, tree_digest(_update(9, 9)), "fedavg")
  assert block["participants"] == [] and block["aggregate_signature"] is None
  assert block["rejected"] == [{"client_id": c0.id, "reason": "bad_signature",
                                "detail": verdict.rejected[0].detail,
                                "attestation_hash": bad.hash()}]
  assert verify_ledger(ledger.path).ok


def test_append_round_refuses_what_was_not_verified(fast) -> None:
  ledger, (c0, c1, _) = fast
  att = _attest(ledger, c0, 0, _update(0, 0))
  unverified = _attest(ledger, c1, 0, _update(1, 0))
  verdict = ledger.verify_round(0, [(att, tree_digest(_update(0, 0)))])
  smuggled = dataclasses.replace(verdict, accepted=(att, unverified))
  with pytest.raises(LedgerError, match="not verified"):
    ledger.append_round(0, smuggled, tree_digest(_update(9, 0)), "fedavg")
  with pytest.raises(LedgerError, match="not verified"):
    ledger.append_round(1, verdict, tree_digest(_update(9, 0)), "fedavg")
  with pytest.raises(LedgerError, match="residual digest must be 32 bytes"):
    ledger.append_round(0, verdict, tree_digest(_update(9, 0)), "fedex_lora", b"short")
  ledger.append_round(0, verdict, tree_digest(_update(9, 0)), "fedavg")
  with pytest.raises(LedgerError, match="not after the last recorded round"):
    ledger.verify_round(0, [])
  read_only = Ledger.open(ledger.path)
  with pytest.raises(LedgerError, match="server identity with its secret key"):
    read_only.verify_round(1, [])
  with pytest.raises(LedgerError, match="not this ledger's server"):
    Ledger.open(ledger.path, server_identity=c0)


def test_numpy_integers_from_the_engine(fast) -> None:
  ledger, (c0, _, _) = fast
  r = np.int64(0)
  att = Attestation.create(c0, ledger.round_context(r), tree_digest(_update(0, 0)),
                           np.int32(12), ledger.backend)
  assert type(att.round) is int and type(att.num_samples) is int
  verdict = ledger.verify_round(r, [(att, tree_digest(_update(0, 0)))])
  block = ledger.append_round(r, verdict, tree_digest(_update(9, 0)), "fedavg")
  assert block["round"] == 0 and block["participants"][0]["num_samples"] == 12
  ledger.blocks[-1]["participants"].clear()  # a copy: the ledger's state is unchanged
  assert len(ledger.blocks[-1]["participants"]) == 1
  with pytest.raises(LedgerError, match="non-negative integer"):
    ledger.round_context(True)
  assert Attestation.from_dict(att.to_dict()) == att
