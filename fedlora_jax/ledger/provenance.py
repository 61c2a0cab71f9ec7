"""Provenance: which round produced an adapter, and who contributed to it."""

from __future__ import annotations

import dataclasses
import os

from fedlora_jax.ledger.bls import Backend
from fedlora_jax.ledger.errors import LedgerError
from fedlora_jax.ledger.ledger import Ledger


@dataclasses.dataclass(frozen=True)
class Contributor:
  name: str
  client_id: str
  update_digest: str
  num_samples: int


@dataclasses.dataclass(frozen=True)
class Provenance:
  """The first round block whose global digest is the adapter's, with its contributors."""

  block_index: int
  round: int
  algorithm: str
  global_digest: str
  block_hash: str
  contributors: tuple[Contributor, ...]


def find_provenance(ledger_path: str | os.PathLike[str], adapter_digest: bytes | str,
                    backend: Backend | str | None = None, *,
                    server_public_key: bytes | str | None = None,
                    genesis_hash: str | None = None) -> Provenance | None:
  """Verifies the ledger (and the pinned anchors given), then finds the round that first
  recorded `adapter_digest`.

  Later rounds without valid clients repeat an unchanged digest; the first block is the one
  whose participants produced it. Returns None when no round recorded the digest; raises
  LedgerError when the ledger is not the one the anchors name.
  """
  digest = adapter_digest.hex() if isinstance(adapter_digest, bytes) else adapter_digest.lower()
  ledger = Ledger.open(ledger_path, backend=backend)
  pk = server_public_key.hex() if isinstance(server_public_key, bytes) else server_public_key
  if pk is not None and ledger.server.pk.hex() != pk.lower():
    raise LedgerError(f"{ledger_path}: server key does not match the pinned server_public_key")
  if genesis_hash is not None and ledger.genesis_hash != genesis_hash.lower():
    raise LedgerError(f"{ledger_path}: genesis hash does not match the pinned genesis_hash")
  for block in ledger.blocks:
    if block["kind"] == "round" and block["global_digest"] == digest:
      contributors = tuple(
          Contributor(p["name"], p["client_id"], p["update_digest"], p["num_samples"])
          for p in block["participants"]
      )
      return Provenance(block["index"], block["round"], block["algorithm"],
                        block["global_digest"], block["block_hash"], contributors)
  return None
