"""The server side: its own keystore, the ledger, verification of a round, receipts, blocks.

It holds registrations (public keys, PoPs, declared sizes) only, never a hospital's keystore.
Aggregation weights come from the signed sample counts of the accepted attestations, under the
rules the genesis block fixes; the participants' co-signatures of each round block come back
through `add_cosignatures`.

A round whose block was written before a crash is replayed, in the simulation and the sites
mode alike: `verify_or_replay` takes the block's participants with their recorded signed counts
instead of verifying again, and `record_or_check` refuses the resume unless what the round
recomputed is what the block records.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fedlora_jax.ledger.attestation import Attestation, Receipt, Registration, RoundContext
from fedlora_jax.ledger.bls import Backend, resolve_backend
from fedlora_jax.ledger.errors import LedgerError
from fedlora_jax.ledger.identity import Identity
from fedlora_jax.ledger.ledger import CoSign, Ledger, RoundVerdict
from fedlora_jax.ledger.signer import enroll

SERVER_NAME = "server"


@dataclasses.dataclass(frozen=True)
class Admission:
  """Which of a round's submissions [S] the aggregation uses, with what signed count.

  Verified now (`verdict`), or replayed (`recorded`: the round's block, written before a crash):
  then a submission is accepted when its client is one of the block's participants (the first
  submission of each), with the count the block records.
  """

  accept: np.ndarray  # [S] bool
  num_samples: np.ndarray  # [S] int64, 0 where not accepted
  verdict: RoundVerdict | None = None
  recorded: dict[str, Any] | None = None

  @property
  def receipts(self) -> tuple[Receipt, ...]:
    """[S] the verdict's receipts, () when replayed (`Ledger.receipts_of` issues the block's
    again)."""
    return () if self.verdict is None else self.verdict.receipts


def round_outcome(block: dict[str, Any]) -> dict[str, Any]:
  """A round block as a metrics record shows it: accepted count, rejection reasons, index."""
  return {"accepted": len(block["participants"]),
          "rejected": [x["reason"] for x in block["rejected"]], "block": block["index"]}


class LedgerServer:
  """The run's ledger with the server's signing key and its policy (an extra sample cap)."""

  def __init__(self, ledger: Ledger, *, max_samples_per_client: int = 0) -> None:
    if max_samples_per_client < 0:
      raise LedgerError(f"ledger.max_samples_per_client must be >= 0, got "
                        f"{max_samples_per_client}")
    self.ledger = ledger
    self.max_samples_per_client = max_samples_per_client

  @classmethod
  def open_or_create(cls, ledger_path: str | os.PathLike[str], keystore: str | os.PathLike[str],
                     registrations: Sequence[Registration], *, label: str,
                     rules: dict[str, Any], max_samples_per_client: int = 0,
                     backend: Backend | str | None = None) -> LedgerServer:
    """Opens the ledger at `ledger_path` (resume) or writes its genesis block with `rules`.

    The server key is `<keystore>/server.key` (created from os randomness on first use). On
    resume the registrations and rules must be exactly the genesis block's; a new ledger refuses
    a registration whose PoP or binding fails or whose name or key repeats (RegistrationError).
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
      recorded = {(r["name"], r["pk"], r["num_samples"]) for r in genesis}
      given = {(r.name, r.pk.hex(), r.num_samples) for r in registrations}
      if recorded != given:
        changed = sorted({n for n, _, _ in recorded ^ given})
        raise LedgerError(f"registrations differ from the genesis block of {path} for {changed}")
      if ledger.rules != rules:
        raise LedgerError(f"the job's rules differ from the genesis block of {path}: "
                          f"{rules} vs {ledger.rules}")
    else:
      enroll(SERVER_NAME, keystore, 0, backend)
      server = Identity.load(keystore, SERVER_NAME, backend)
      ledger = Ledger.create(path, label, server, list(registrations), backend, rules=rules)
    return cls(ledger, max_samples_per_client=max_samples_per_client)

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
    frozen base's digest the genesis rules bind (None when unbound)."""
    return {"ledger_id": self.ledger.ledger_id,
            "server_public_key": self.server_public_key.hex(),
            "genesis_hash": self.genesis_hash,
            "base_digest": self.ledger.rules["base_digest"]}

  def round_context(self, round: int) -> RoundContext:
    return self.ledger.round_context(round)

  def verify(self, round: int, submissions: Sequence[tuple[Attestation, bytes]]) -> RoundVerdict:
    """Verifies (attestation, digest of the update received) pairs; see `Ledger.verify_round`.

    The verdict's `accept`, `num_samples` (signed counts, 0 when rejected) and `weights` [S]
    are what the aggregation uses; its `receipts` go back to the hospitals.
    """
    return self.ledger.verify_round(round, submissions, max_samples=self.max_samples_per_client)

  def record(self, round: int, verdict: RoundVerdict, global_digest: bytes, algorithm: str,
             residual_digest: bytes | None = None,
             missing: Sequence[tuple[str, str]] = (),
             privacy: dict[str, Any] | None = None) -> dict[str, Any]:
    """Appends the round's block (`missing`: sampled clients that did not reply, as
    (client id, reason); `privacy`: the privacy spent so far, DP runs); returns it."""
    return self.ledger.append_round(round, verdict, global_digest, algorithm, residual_digest,
                                    missing=missing, privacy=privacy)

  def verify_or_replay(self, round: int, submissions: Sequence[tuple[Attestation, bytes]]
                       ) -> Admission:
    """`verify`, unless the block of `round` is already written (a resume after a crash): then
    that block's participants are accepted with their recorded signed counts."""
    block = self.recorded_block(round)
    if block is None:
      verdict = self.verify(round, submissions)
      return Admission(verdict.accept, verdict.num_samples, verdict=verdict)
    signed = {p["client_id"]: p["num_samples"] for p in block["participants"]}
    accept, counts = [], []
    for att, _ in submissions:  # each participant's first submission, with its recorded count
      accept.append(att.client_id in signed)
      counts.append(signed.pop(att.client_id, 0))
    return Admission(np.asarray(accept, bool), np.asarray(counts, np.int64), recorded=block)

  def record_or_check(self, round: int, admission: Admission, global_digest: bytes,
                      algorithm: str, residual_digest: bytes | None = None,
                      missing: Sequence[tuple[str, str]] = (),
                      privacy: dict[str, Any] | None = None) -> dict[str, Any]:
    """`record`s the round's block after a verification; after a replay, checks that the global
    adapter, the base residual and the privacy spent the round recomputed are what its block
    records (else LedgerError: the resume is refused) and returns that block."""
    block = admission.recorded
    if block is None:
      return self.record(round, admission.verdict, global_digest, algorithm, residual_digest,
                         missing=missing, privacy=privacy)
    recomputed = {"global_digest": global_digest.hex(),
                  "residual_digest": None if residual_digest is None else residual_digest.hex(),
                  "privacy": privacy}
    differ = [k for k, v in recomputed.items() if block[k] != v]
    if differ:
      raise LedgerError(f"round {round}: recomputed {', '.join(differ)} differs from the "
                        "ledger's record (non-deterministic resume?)")
    return block

  def add_cosignatures(self, answers: Sequence[CoSign]) -> dict[str, Any]:
    """The head round block's co-signature from its participants (`Ledger.add_cosignatures`)."""
    return self.ledger.add_cosignatures(answers)

  def blocks_since(self, index: int) -> list[dict[str, Any]]:
    """Blocks `index`.. (what a hospital's replica lacks), oldest first."""
    return self.ledger.blocks[index:]

  def recorded_block(self, round: int) -> dict[str, Any] | None:
    """The block of `round` when it is already in the ledger (resume after a crash)."""
    for block in self.ledger.blocks:
      if block["kind"] == "round" and block["round"] == round:
        return block
    return None
