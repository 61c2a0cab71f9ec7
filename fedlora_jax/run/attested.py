"""The identity ledger in a run: client keys, per-round attestations, verification, blocks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fedlora_jax import ledger as L
from fedlora_jax.models import peft_tensors


def client_update(local_c: Any, c: int) -> dict[str, np.ndarray]:
  """Client c's adapter out of the [C, ...] tree of the round, as PEFT-named tensors (the
  encoding that is digested, as for the exported adapter file)."""
  return peft_tensors(jax.tree.map(lambda x: np.asarray(x[c]), local_c))


class AttestedRounds:
  """Owns the run's ledger and identities (secret keys in `<workdir>/keys`, mode 0600)."""

  def __init__(self, workdir: str, client_names: Sequence[str], *, ledger_id: str, seed: int,
               backend: str):
    self.backend = L.get_backend(backend)
    keys = os.path.join(workdir, "keys")
    path = os.path.join(workdir, "ledger.jsonl")
    names = ["server", *client_names]
    if os.path.exists(path):
      stored = L.load_keystore(keys, self.backend)
      missing = [n for n in names if n not in stored]
      if missing:
        raise L.LedgerError(f"{keys} lacks the keys of {missing}")
      ids = {n: stored[n] for n in names}
      self.ledger = L.Ledger.open(path, ids["server"], self.backend)
    else:
      ikm = hashlib.sha256(f"fedlora-jax identities, seed {seed}".encode()).digest()
      ids = {n: L.Identity.generate(n, ikm, self.backend) for n in names}
      for ident in ids.values():
        if not os.path.exists(os.path.join(keys, ident.name + ".key")):
          ident.save(keys)
      self.ledger = L.Ledger.create(path, ledger_id, ids["server"],
                                    [ids[n] for n in client_names], self.backend)
    self.clients = [ids[n] for n in client_names]
    self.path = path

  def recorded_block(self, round_no: int) -> dict[str, Any] | None:
    for block in self.ledger.blocks:
      if block.get("kind") == "round" and block.get("round") == round_no:
        return block
    return None

  def verify(self, round_no: int, client_ids: Sequence[int], local_c: Any,
             num_samples: Sequence[int]) -> tuple[np.ndarray, L.RoundVerdict]:
    """Each client signs the digest of its update; the server checks them all at once.

    Returns the [C] accept mask and the verdict (for the block).
    """
    ctx = self.ledger.round_context(round_no)
    submissions = []
    for c, cid in enumerate(client_ids):
      digest = L.tree_digest(client_update(local_c, c))
      att = L.Attestation.create(self.clients[cid], ctx, digest, int(num_samples[c]), self.backend)
      submissions.append((att, digest))  # in simulation the server receives what was signed
    verdict = self.ledger.verify_round(round_no, submissions)
    accepted = {a.client_id for a in verdict.accepted}
    return np.asarray([self.clients[cid].id in accepted for cid in client_ids]), verdict

  def record(self, round_no: int, verdict: L.RoundVerdict, global_digest: bytes,
             algorithm: str) -> dict[str, Any]:
    return self.ledger.append_round(round_no, verdict.accepted, verdict.rejected, global_digest,
                                    algorithm)
