"""The hospital side: its own keystore, enrolment, attestations, and the server's receipts.

A hospital's secret key lives only in its keystore directory (`<keystore>/<name>.key`, directory
0700, file 0600, from the operating system's randomness, created once and reused). Signing takes
the digest of the update (bytes), so the update itself never has to reach the signer's process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedlora_jax.ledger.attestation import Attestation, Receipt, Registration, RoundContext
from fedlora_jax.ledger.block import canonical_json
from fedlora_jax.ledger.bls import Backend, resolve_backend
from fedlora_jax.ledger.errors import KeystoreError, LedgerError
from fedlora_jax.ledger.identity import Identity, check_name

ISSUED_FILE = "issued.jsonl"  # in receipts_dir: [ledger_id, round, attestation hash] per line


def enroll(name: str, keystore: str | os.PathLike[str],
           backend: Backend | str | None = None) -> Registration:
  """The registration record (name, public key, PoP) of `name`'s key in `keystore`, creating
  the key from os randomness when the keystore does not hold one yet."""
  backend = resolve_backend(backend)
  try:
    identity = Identity.load(keystore, name, backend)
  except KeystoreError:
    if (Path(keystore) / f"{check_name(name)}.key").exists():
      raise  # unreadable or unsafe: never replace a key
    identity = Identity.generate(name, backend=backend)
    identity.save(keystore)
  return Registration.of(identity, backend)


class HospitalSigner:
  """One hospital's signer: loads only its own keystore; checks and keeps the server's receipts.

  `server_public_key` is the server key the hospital pinned (receipts must verify under it).
  Every attestation it signs is noted in `<receipts_dir>/issued.jsonl`, so a receipt that comes
  back to another process of the same hospital (a fresh Flower ClientApp) is still recognised.
  """

  def __init__(self, name: str, keystore: str | os.PathLike[str],
               receipts_dir: str | os.PathLike[str], server_public_key: bytes,
               backend: Backend | str | None = None) -> None:
    self.backend = resolve_backend(backend)
    self._identity = Identity.load(keystore, name, self.backend)
    self.receipts_dir = Path(receipts_dir)
    self.server_public_key = server_public_key
    self._issued: set[tuple[str, int, str]] = set()

  @property
  def name(self) -> str:
    return self._identity.name

  @property
  def id(self) -> str:
    return self._identity.id

  @property
  def public_key(self) -> bytes:
    return self._identity.pk

  def registration(self) -> Registration:
    """This hospital's registration record (public key and proof of possession)."""
    return Registration.of(self._identity, self.backend)

  def attest(self, context: RoundContext, update_digest: bytes,
             num_samples: int) -> Attestation:
    """Signs 'my update for this ledger, round and head has this digest and sample count'."""
    if not isinstance(update_digest, bytes) or len(update_digest) != 32:
      raise LedgerError(f"{self.name}: update digest must be 32 bytes")
    att = Attestation.create(self._identity, context, update_digest, num_samples, self.backend)
    key = (att.ledger_id, att.round, att.hash())
    self.receipts_dir.mkdir(parents=True, exist_ok=True)
    with open(self.receipts_dir / ISSUED_FILE, "a") as f:
      f.write(json.dumps(list(key)) + "\n")
    self._issued.add(key)
    return att

  def _issued_here(self, key: tuple[str, int, str]) -> bool:
    """Whether this hospital signed the attestation `key` (in this process or an earlier one)."""
    if key in self._issued:
      return True
    path = self.receipts_dir / ISSUED_FILE
    if not path.is_file():
      return False
    for line in path.read_text().splitlines():
      try:
        self._issued.add(tuple(json.loads(line)))
      except (ValueError, TypeError):
        continue  # a line torn by a crash names no attestation
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
