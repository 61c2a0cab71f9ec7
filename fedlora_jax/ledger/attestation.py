"""Signed statements: client attestations, server receipts, registrations, canonical messages.

Every signed message starts with a distinct domain tag, then fixed-layout fields (u64 big-endian
integers, u64 length-prefixed strings, raw 32-byte hashes), so no two statements of different
kinds or contents share a byte encoding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
import struct
from typing import Any, Mapping

from fedlora_jax.ledger.block import canonical_json
from fedlora_jax.ledger.bls import Backend, resolve_backend
from fedlora_jax.ledger.errors import LedgerError
from fedlora_jax.ledger.identity import Identity, identity_id

ATTESTATION_TAG = b"fedlora-jax/ledger/attestation/v1\x00"
SERVER_TAG = b"fedlora-jax/ledger/server-block/v1\x00"
RECEIPT_TAG = b"fedlora-jax/ledger/receipt/v1\x00"
REGISTRATION_TAG = b"fedlora-jax/ledger/registration/v1\x00"
COSIGN_TAG = b"fedlora-jax/ledger/cosign/v1\x00"
MEMBERSHIP_TAG = b"fedlora-jax/ledger/membership/v1\x00"
HASH_LEN = 32
ACCEPTED = "accepted"  # a receipt's verdict; otherwise the rejection reason


def _u64(n: int) -> bytes:
  if type(n) is not int or not 0 <= n < 2**64:
    raise ValueError(f"expected an unsigned 64-bit integer, got {n!r}")
  return struct.pack(">Q", n)


def _lp(text: str) -> bytes:
  data = text.encode("utf-8")
  return _u64(len(data)) + data


def _hash32(value: str, what: str) -> bytes:
  try:
    raw = bytes.fromhex(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{what} is not hex") from e
  if len(raw) != HASH_LEN or raw.hex() != value:
    raise ValueError(f"{what} must be {HASH_LEN} bytes of lowercase hex")
  return raw


def attestation_message(
    ledger_id: str, round: int, prev_hash: str, client_id: str, update_digest: str,
    num_samples: int,
) -> bytes:
  """The bytes a client signs for one round (all hashes as lowercase hex strings)."""
  return b"".join([
      ATTESTATION_TAG, _lp(ledger_id), _u64(round), _hash32(prev_hash, "prev_hash"),
      _hash32(client_id, "client_id"), _hash32(update_digest, "update_digest"),
      _u64(num_samples),
  ])


def server_message(ledger_id: str, index: int, body_hash: bytes) -> bytes:
  """The bytes the server signs for block `index`: the hash of the block body."""
  return SERVER_TAG + _lp(ledger_id) + _u64(index) + body_hash


def receipt_message(ledger_id: str, round: int, client_id: str, attestation_hash: str,
                    verdict: str) -> bytes:
  """The bytes the server signs when it answers a submission (client_id as claimed)."""
  return b"".join([RECEIPT_TAG, _lp(ledger_id), _u64(round), _lp(client_id),
                   _hash32(attestation_hash, "attestation_hash"), _lp(verdict)])


def registration_message(name: str, pk: bytes, num_samples: int) -> bytes:
  """The bytes a new member's key signs: its name, its key and its declared dataset size."""
  return REGISTRATION_TAG + _lp(name) + _lp(pk.hex()) + _u64(num_samples)


def cosign_message(ledger_id: str, index: int, block_hash: str) -> bytes:
  """The bytes a round's participant signs once it has checked block `index` (its co-signature)."""
  return COSIGN_TAG + _lp(ledger_id) + _u64(index) + _hash32(block_hash, "block_hash")


def membership_message(ledger_id: str, prev_hash: str, registrations: list[dict[str, Any]],
                       removals: list[str]) -> bytes:
  """The bytes current members sign to approve a membership change after genesis: the ledger,
  the head it extends and the canonical JSON of the registrations (joins, re-declared sizes)
  and removals (ids of members leaving)."""
  body = hashlib.sha256(canonical_json({"registrations": registrations, "removals": removals})
                        .encode("ascii")).digest()
  return MEMBERSHIP_TAG + _lp(ledger_id) + _hash32(prev_hash, "prev_hash") + body


def attestation_hash(message: bytes) -> str:
  """Hex SHA-256 of an attestation's signed bytes: how blocks and receipts name a submission."""
  return hashlib.sha256(message).hexdigest()


def _from_dict(cls: type, data: Mapping[str, Any], hex_fields: tuple[str, ...] = ()) -> Any:
  """Builds a dataclass from its `to_dict` form, refusing missing or unknown fields."""
  names = {f.name for f in dataclasses.fields(cls)}
  if not isinstance(data, Mapping) or set(data) != names:
    got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
    raise LedgerError(f"malformed {cls.__name__}: expected fields {sorted(names)}, got {got}")
  try:
    return cls(**{**data, **{k: bytes.fromhex(data[k]) for k in hex_fields}})
  except (TypeError, ValueError) as e:
    raise LedgerError(f"malformed {cls.__name__}: {e}") from e


@dataclasses.dataclass(frozen=True)
class RoundContext:
  """What a client must bind its attestation to: the ledger (its id carries the genesis nonce),
  the round, the current head."""

  ledger_id: str
  round: int
  prev_hash: str

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> RoundContext:
    return _from_dict(cls, data)


@dataclasses.dataclass(frozen=True)
class Attestation:
  """A client's signed claim: 'for this round and head, my update has this digest and count'."""

  ledger_id: str
  round: int
  prev_hash: str
  client_id: str
  update_digest: str
  num_samples: int
  signature: bytes

  @classmethod
  def create(
      cls, identity: Identity, context: RoundContext, update_digest: bytes, num_samples: int,
      backend: Backend | str | None = None,
  ) -> Attestation:
    """Signs an attestation with `identity`'s secret key (numpy integer counts accepted)."""
    fields = dict(
        ledger_id=context.ledger_id, round=operator.index(context.round),
        prev_hash=context.prev_hash, client_id=identity.id, update_digest=update_digest.hex(),
        num_samples=operator.index(num_samples),
    )
    return cls(**fields, signature=identity.sign(attestation_message(**fields), backend))

  def message(self) -> bytes:
    """The signed bytes; raises ValueError when a field is malformed."""
    return attestation_message(
        self.ledger_id, self.round, self.prev_hash, self.client_id, self.update_digest,
        self.num_samples,
    )

  def hash(self) -> str:
    """`attestation_hash` of the signed bytes; of the canonical JSON when malformed."""
    try:
      return attestation_hash(self.message())
    except ValueError:
      return attestation_hash(canonical_json(self.to_dict()).encode("ascii"))

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "signature": self.signature.hex()}

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> Attestation:
    return _from_dict(cls, data, ("signature",))


@dataclasses.dataclass(frozen=True)
class Receipt:
  """The server's signed answer to one submission: round, claimed client id, attestation hash
  and verdict (`ACCEPTED` or the rejection reason). A hospital keeps it as evidence."""

  ledger_id: str
  round: int
  client_id: str
  attestation_hash: str
  verdict: str
  signature: bytes

  @classmethod
  def create(cls, server: Identity, ledger_id: str, round: int, att: Attestation, verdict: str,
             backend: Backend | str | None = None) -> Receipt:
    return cls.issue(server, ledger_id, round, str(att.client_id)[:128], att.hash(), verdict,
                     backend)

  @classmethod
  def issue(cls, server: Identity, ledger_id: str, round: int, client_id: str,
            attestation_hash: str, verdict: str, backend: Backend | str | None = None) -> Receipt:
    """The receipt for an attestation known by its hash (as a block records it)."""
    fields = dict(ledger_id=ledger_id, round=round, client_id=client_id,
                  attestation_hash=attestation_hash, verdict=verdict)
    return cls(**fields, signature=server.sign(receipt_message(**fields), backend))

  def message(self) -> bytes:
    return receipt_message(self.ledger_id, self.round, self.client_id, self.attestation_hash,
                           self.verdict)

  def verify(self, server_pk: bytes, backend: Backend | str | None = None) -> bool:
    """Whether the server key `server_pk` signed this receipt (False when malformed)."""
    try:
      message = self.message()
    except ValueError:
      return False
    return resolve_backend(backend).verify(server_pk, message, self.signature)

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "signature": self.signature.hex()}

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> Receipt:
    return _from_dict(cls, data, ("signature",))


@dataclasses.dataclass(frozen=True)
class Registration:
  """A public key with its proof of possession, and its `binding`: the key's signature over its
  name, key and declared dataset size (`num_samples`, the most a signed count may claim), so a
  registry can neither swap names between keys nor change a declared size."""

  name: str
  pk: bytes
  pop: bytes
  num_samples: int
  binding: bytes

  @property
  def id(self) -> str:
    return identity_id(self.pk)

  @classmethod
  def of(cls, identity: Identity, num_samples: int,
         backend: Backend | str | None = None) -> Registration:
    """A registration for an identity that holds its secret key."""
    n = operator.index(num_samples)
    binding = identity.sign(registration_message(identity.name, identity.pk, n), backend)
    return cls(identity.name, identity.pk, identity.pop_prove(backend), n, binding)

  def message(self) -> bytes:
    """The bound bytes; raises ValueError when the size is not a u64."""
    return registration_message(self.name, self.pk, self.num_samples)

  def verify(self, backend: Backend | str | None = None) -> bool:
    """PoP and binding both verify."""
    b = resolve_backend(backend)
    try:
      message = self.message()
    except ValueError:
      return False
    return b.pop_verify(self.pk, self.pop) and b.verify(self.pk, message, self.binding)

  def to_dict(self) -> dict[str, Any]:
    return {"name": self.name, "id": self.id, "pk": self.pk.hex(), "pop": self.pop.hex(),
            "num_samples": self.num_samples, "binding": self.binding.hex()}

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> Registration:
    """From `to_dict` output (the `id` field, when present, must be sha256 of the key)."""
    need = {"name", "pk", "pop", "num_samples", "binding"}
    if not isinstance(data, Mapping) or not need <= set(data) <= need | {"id"}:
      raise LedgerError(f"malformed registration: expected fields {sorted(need)} (and id)")
    try:
      reg = cls(data["name"], bytes.fromhex(data["pk"]), bytes.fromhex(data["pop"]),
                data["num_samples"], bytes.fromhex(data["binding"]))
    except (TypeError, ValueError) as e:
      raise LedgerError(f"malformed registration {data.get('name')!r}: {e}") from e
    if type(reg.num_samples) is not int or reg.num_samples < 0:
      raise LedgerError(f"registration {reg.name!r}: num_samples must be a non-negative integer")
    if data.get("id", reg.id) != reg.id:
      raise LedgerError(f"registration {reg.name!r}: id is not sha256(pk)")
    return reg
