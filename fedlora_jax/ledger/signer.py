"""The hospital side: its own keystore, enrolment, attestations, the server's receipts, its
replica of the ledger and its co-signatures.

A hospital's secret key lives only in its keystore directory (`<keystore>/<name>.key`, directory
0700, file 0600, from the operating system's randomness, created once and reused). Signing takes
the digest of the update (bytes), so the update itself never has to reach the signer's process.
Every attestation it signs is kept in `<receipts_dir>/issued.jsonl` (the evidence of a dispute,
`verify_ledger --issued`); every refusal to co-sign in `refusals.jsonl`; its copy of the ledger
in `ledger.jsonl` (`replica.Replica`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from typing import Any, Mapping, Sequence

from fedlora_jax.ledger.attestation import (
    Attestation, Receipt, Registration, RoundContext, cosign_message,
)
from fedlora_jax.ledger.block import canonical_json
from fedlora_jax.ledger.bls import Backend, resolve_backend
from fedlora_jax.ledger.errors import KeystoreError, LedgerError
from fedlora_jax.ledger.identity import Identity, check_name
from fedlora_jax.ledger.ledger import CoSign
from fedlora_jax.ledger.replica import Replica
from fedlora_jax.ledger.rules import applied_weights

ISSUED_FILE = "issued.jsonl"  # in receipts_dir: each signed attestation (its to_dict) per line
REFUSALS_FILE = "refusals.jsonl"  # in receipts_dir: {block_hash, index, reason} per line
REPLICA_FILE = "ledger.jsonl"  # in receipts_dir: the hospital's copy of the ledger


def enroll(name: str, keystore: str | os.PathLike[str], num_samples: int,
           backend: Backend | str | None = None) -> Registration:
  """The registration record (name, public key, PoP, declared dataset size `num_samples` and
  the key's signature binding the three) of `name`'s key in `keystore`, creating the key from
  os randomness when the keystore does not hold one yet."""
  backend = resolve_backend(backend)
  try:
    identity = Identity.load(keystore, name, backend)
  except KeystoreError:
    if (Path(keystore) / f"{check_name(name)}.key").exists():
      raise  # unreadable or unsafe: never replace a key
    identity = Identity.generate(name, backend=backend)
    identity.save(keystore)
  return Registration.of(identity, num_samples, backend)


class HospitalSigner:
  """One hospital's signer: loads only its own keystore; checks and keeps the server's receipts.

  `server_public_key` is the server key the hospital pinned (receipts must verify under it),
  `genesis_hash` the genesis it pinned (its replica's block 0 must have it; None: trust the
  first genesis received). Every attestation it signs is noted in `<receipts_dir>/issued.jsonl`,
  so a receipt that comes back to another process of the same hospital (a fresh Flower
  ClientApp) is still recognised.
  """

  def __init__(self, name: str, keystore: str | os.PathLike[str],
               receipts_dir: str | os.PathLike[str], server_public_key: bytes,
               backend: Backend | str | None = None, genesis_hash: str | None = None) -> None:
    self.backend = resolve_backend(backend)
    self._identity = Identity.load(keystore, name, self.backend)
    self.receipts_dir = Path(receipts_dir)
    self.server_public_key = server_public_key
    self._issued: dict[tuple[str, int, str], Attestation] = {}
    self._replica: Replica | None = None
    self.genesis_hash = genesis_hash

  @property
  def name(self) -> str:
    return self._identity.name

  @property
  def id(self) -> str:
    return self._identity.id

  @property
  def public_key(self) -> bytes:
    return self._identity.pk

  def registration(self, num_samples: int) -> Registration:
    """This hospital's registration record declaring `num_samples` training examples."""
    return Registration.of(self._identity, num_samples, self.backend)

  @property
  def replica(self) -> Replica:
    """This hospital's copy of the ledger (opened, and verified, on first use)."""
    if self._replica is None:
      self._replica = Replica(self.receipts_dir / REPLICA_FILE, self.backend, self.genesis_hash)
    return self._replica

  def approve(self, message: bytes) -> bytes:
    """Signs a membership change (`Ledger.membership_message`) this member agrees to."""
    return self._identity.sign(message, self.backend)

  def receive(self, blocks: Sequence[Mapping[str, Any]]) -> None:
    """Extends the replica by `blocks` without co-signing (e.g. the closing block)."""
    self.replica.extend(blocks)

  def cosign(self, blocks: Sequence[Mapping[str, Any]], global_digest: bytes) -> CoSign:
    """The client side of co-signing the last of `blocks`, a round block this hospital took
    part in: extends the replica by `blocks` (each verified in full on top of the copy), then
    checks the block against what this hospital sent and receives: the attestation it signed
    (update digest and count, by the attestation hash), its weight under the genesis rules, and
    `global_digest`, the digest of the global adapter it receives. Signs the block hash, or
    refuses with the reason (kept in `refusals.jsonl`)."""
    block = blocks[-1]
    reason = self._cosign_problem(blocks, global_digest)
    if reason is not None:
      self.receipts_dir.mkdir(parents=True, exist_ok=True)
      with open(self.receipts_dir / REFUSALS_FILE, "a") as f:
        f.write(canonical_json({"block_hash": str(block.get("block_hash")),
                                "index": block.get("index"), "reason": reason}) + "\n")
      return CoSign(self.id, str(block.get("block_hash")), None, reason)
    message = cosign_message(self.replica.state.ledger_id, block["index"], block["block_hash"])
    return CoSign(self.id, block["block_hash"], self._identity.sign(message, self.backend))

  def _cosign_problem(self, blocks: Sequence[Mapping[str, Any]],
                      global_digest: bytes) -> str | None:
    try:
      self.replica.extend(blocks)
    except LedgerError as e:
      return f"the block does not extend this hospital's copy: {e}"
    block, state = blocks[-1], self.replica.state
    assert state is not None
    if block.get("kind") != "round" or state.head_hash != block["block_hash"]:
      return "not the newest round block"
    entries = [p for p in block["participants"] if p["client_id"] == self.id]
    if not entries:
      return "this hospital is not a participant of the block"
    mine = entries[0]
    key = (state.ledger_id, block["round"], mine["attestation_hash"])
    if not self._issued_here(key):
      return (f"the block records attestation {mine['attestation_hash'][:16]}... (update, count) "
              "that this hospital did not sign for this round")
    counts = [p["num_samples"] for p in block["participants"]]
    weight = applied_weights(counts, state.rules)[block["participants"].index(mine)]
    if mine["weight"] != weight:
      return f"weight {mine['weight']} is not the genesis rules' {weight}"
    if block["global_digest"] != global_digest.hex():
      return "the recorded global digest is not the digest of the global adapter received"
    return None

  def attest(self, context: RoundContext, update_digest: bytes,
             num_samples: int) -> Attestation:
    """Signs 'my update for this ledger, round and head has this digest and sample count'."""
    if not isinstance(update_digest, bytes) or len(update_digest) != 32:
      raise LedgerError(f"{self.name}: update digest must be 32 bytes")
    att = Attestation.create(self._identity, context, update_digest, num_samples, self.backend)
    self.receipts_dir.mkdir(parents=True, exist_ok=True)
    with open(self.receipts_dir / ISSUED_FILE, "a") as f:
      f.write(canonical_json(att.to_dict()) + "\n")
    self._issued[(att.ledger_id, att.round, att.hash())] = att
    return att

  def _issued_here(self, key: tuple[str, int, str]) -> bool:
    """Whether this hospital signed the attestation `key` (in this process or an earlier one)."""
    if key in self._issued:
      return True
    for att in load_issued(self.receipts_dir):
      self._issued[(att.ledger_id, att.round, att.hash())] = att
    return key in self._issued

  def accept_receipt(self, receipt: Receipt) -> Path:
    """Checks a receipt (server signature, this hospital, an attestation it issued) and stores
    it as `<receipts_dir>/r<round>-<hash prefix>.json`; never overwrites a different one."""
    if not receipt.verify(self.server_public_key, self.backend):
      raise LedgerError(f"{self.name}: receipt for round {receipt.round!r} is not signed by the "
                        "pinned server key")
    if receipt.client_id != self.id:
      raise LedgerError(f"{self.name}: receipt names client {receipt.client_id[:16]}..., "
                        "not this hospital")
    if not self._issued_here((receipt.ledger_id, receipt.round, receipt.attestation_hash)):
      raise LedgerError(f"{self.name}: receipt for round {receipt.round} answers an attestation "
                        "this hospital did not issue")
    self.receipts_dir.mkdir(parents=True, exist_ok=True)
    path = self.receipts_dir / f"r{receipt.round:06d}-{receipt.attestation_hash[:16]}.json"
    text = canonical_json(receipt.to_dict()) + "\n"
    try:
      with open(path, "x") as f:
        f.write(text)
    except FileExistsError:
      if path.read_text() != text:
        raise LedgerError(f"{self.name}: {path} already holds a different receipt") from None
    return path


def load_receipts(directory: str | os.PathLike[str]) -> list[tuple[Path, Receipt]]:
  """Every `*.json` receipt under `directory` (recursively), sorted by path."""
  directory = Path(directory)
  if not directory.is_dir():
    raise LedgerError(f"no receipts directory at {directory}")
  out = []
  for path in sorted(directory.rglob("*.json")):
    try:
      out.append((path, Receipt.from_dict(json.loads(path.read_text()))))
    except ValueError as e:  # LedgerError and JSONDecodeError are ValueErrors
      raise LedgerError(f"receipt {path}: {e}") from e
  return out


def load_issued(directory: str | os.PathLike[str]) -> list[Attestation]:
  """Every attestation in the `issued.jsonl` files under `directory` (recursively); a line torn
  by a crash names no attestation and is skipped."""
  out = []
  for path in sorted(Path(directory).rglob(ISSUED_FILE)):
    for line in path.read_text().splitlines():
      try:
        out.append(Attestation.from_dict(json.loads(line)))
      except ValueError:  # LedgerError and JSONDecodeError are ValueErrors
        continue
  return out
