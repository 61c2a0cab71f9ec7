"""The server side: its own keystore, the ledger, verification of a round, receipts, blocks.

It holds registrations (public keys and PoPs) only, never a hospital's keystore. Aggregation
weights come from the signed sample counts of the accepted attestations.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from fedlora_jax.ledger.attestation import Attestation, Registration, RoundContext
from fedlora_jax.ledger.bls import Backend, resolve_backend
from fedlora_jax.ledger.errors import LedgerError
from fedlora_jax.ledger.identity import Identity
from fedlora_jax.ledger.ledger import Ledger, RoundVerdict
from fedlora_jax.ledger.signer import enroll

SERVER_NAME = "server"


class LedgerServer:
  """The run's ledger with the server's signing key and its policy (sample cap, weighting)."""

  def __init__(self, ledger: Ledger, *, max_samples_per_client: int = 0,
               weighting: str = "num_samples") -> None:
    if max_samples_per_client < 0:
      raise LedgerError(f"ledger.max_samples_per_client must be >= 0, got "
                        f"{max_samples_per_client}")
    self.ledger = ledger
    self.max_samples_per_client = max_samples_per_client
    self.weighting = weighting

  @classmethod
  def open_or_create(cls, ledger_path: str | os.PathLike[str], keystore: str | os.PathLike[str],
                     registrations: Sequence[Registration], *, label: str,
                     max_samples_per_client: int = 0, weighting: str = "num_samples",
                     backend: Backend | str | None = None,
                     base_digest: str | None = None) -> LedgerServer:
    """Opens the ledger at `ledger_path` (resume) or writes its genesis block, which binds
    `base_digest` (the frozen base's digest, hex; a resumed ledger must hold the same).

    The server key is `<keystore>/server.key` (created from os randomness on first use). On
    resume the registrations must be exactly the genesis block's; a new ledger refuses a
    registration whose PoP fails or whose name or key repeats (RegistrationError).
    """
    backend = resolve_backend(backend)
    path = Path(ledger_path)
    if path.exists():
      try:
        server = Identity.load(keystore, SERVER_NAME, backend)
      except LedgerError as e:
        raise LedgerError(f"ledger {path} exists but the server key is unusable: {e}") from e
      ledger = Ledger.open(path, server, backend)
      genesis = ledger.blocks[0]["registrations"]
      recorded = {(r["name"], r["pk"]) for r in genesis}
      given = {(r.name, r.pk.hex()) for r in registrations}
      if recorded != given:
        changed = sorted(n for n, _ in recorded ^ given)
        raise LedgerError(f"registrations differ from the genesis block of {path} for {changed}")
      if ledger.blocks[0]["base_digest"] != base_digest:
        raise LedgerError(f"the base's digest {str(base_digest)[:16]}... differs from the one the "
                          f"genesis block of {path} binds ({str(ledger.blocks[0]['base_digest'])[:16]}"
                          "...): a different base or quantization")
    else:
      enroll(SERVER_NAME, keystore, backend)
      server = Identity.load(keystore, SERVER_NAME, backend)
      ledger = Ledger.create(path, label, server, list(registrations), backend, base_digest)
    return cls(ledger, max_samples_per_client=max_samples_per_client, weighting=weighting)

  @property
  def path(self) -> Path:
    return self.ledger.path

  @property
  def head_hash(self) -> str:
    return self.ledger.head_hash

  @property
  def server_public_key(self) -> bytes:
    return self.ledger.server.pk

  @property
  def genesis_hash(self) -> str:
    return self.ledger.genesis_hash

  def info(self) -> dict[str, str | None]:
    """The trust anchors a hospital pins (hex), for summary.json, report.md and the log, and the
    frozen base's digest the genesis binds (None when unbound)."""
    return {"ledger_id": self.ledger.ledger_id,
            "server_public_key": self.server_public_key.hex(),
            "genesis_hash": self.genesis_hash,
            "base_digest": self.ledger.blocks[0]["base_digest"]}

  def round_context(self, round: int) -> RoundContext:
    return self.ledger.round_context(round)

  def verify(self, round: int, submissions: Sequence[tuple[Attestation, bytes]]) -> RoundVerdict:
    """Verifies (attestation, digest of the update received) pairs; see `Ledger.verify_round`.

    The verdict's `accept`, `num_samples` (signed counts, 0 when rejected) and `weights` [S]
    are what the aggregation uses; its `receipts` go back to the hospitals.
    """
    return self.ledger.verify_round(round, submissions, max_samples=self.max_samples_per_client,
                                    weighting=self.weighting)

  def record(self, round: int, verdict: RoundVerdict, global_digest: bytes, algorithm: str,
             residual_digest: bytes | None = None,
             missing: Sequence[tuple[str, str]] = (),
             privacy: dict[str, Any] | None = None) -> dict[str, Any]:
    """Appends the round's block (`missing`: sampled clients that did not reply, as
    (client id, reason); `privacy`: the privacy spent so far, DP runs); returns it."""
    return self.ledger.append_round(round, verdict, global_digest, algorithm, residual_digest,
                                    missing=missing, privacy=privacy)

  def recorded_block(self, round: int) -> dict[str, Any] | None:
    """The block of `round` when it is already in the ledger (resume after a crash)."""
    for block in self.ledger.blocks:
      if block["kind"] == "round" and block["round"] == round:
        return block
    return None
