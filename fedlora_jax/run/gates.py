"""Between local training and aggregation: who is accepted, with what weight, and the record.

A gate sees each client's trained update where it lives (the process holding that hospital),
decides on process 0 (the server), and returns the same [S] accept mask and sample counts to every
process, since aggregation is one SPMD program. `OpenGate` accepts every trained client with its
training-set size; `LedgerGate` has each client sign an attestation of its update's digest and
count, verifies all of them on the server in one aggregate check, weights by the signed counts
and appends the round's block to the ledger.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import numpy as np

from fedlora_jax import ledger as L
from fedlora_jax import models
from fedlora_jax.federated.round import PAD
from fedlora_jax.run import multihost


class Gate(Protocol):

  def admit(self, round_no: int, slot_ids: np.ndarray, local_c: Any
            ) -> tuple[np.ndarray, np.ndarray]:
    """([S] accept, [S] sample counts) for round `round_no` (1-based) on every process."""

  def record(self, round_no: int, global_lora: Any, base: Any) -> dict[str, Any]:
    """The round's record after aggregation (what metrics.jsonl shows under "ledger")."""

  def summary(self, adapter_file: str | None) -> dict[str, Any]:
    """What summary.json shows under "ledger" ({} without a ledger)."""


class OpenGate:
  """No ledger: every trained client is accepted, weighted by its training-set size."""

  def __init__(self, train_sizes: Sequence[int]):
    self.train_sizes = np.asarray(train_sizes, np.float32)

  def admit(self, round_no, slot_ids, local_c):
    del round_no, local_c
    real = slot_ids != PAD
    return real, np.where(real, self.train_sizes[np.maximum(slot_ids, 0)], 0.0)

  def record(self, round_no, global_lora, base):
    del round_no, global_lora, base
    return {}

  def summary(self, adapter_file):
    del adapter_file
    return {}


def update_tensors(tree: Any) -> dict[str, np.ndarray]:
  """One client's adapter as PEFT-named tensors: the encoding that is digested and exported."""
  return models.peft_tensors(jax.tree.map(np.asarray, tree))


def local_updates(local_c: Any, slot_ids: np.ndarray) -> dict[int, Any]:
  """{slot: that client's trained adapter (numpy tree)} for the real slots held on this process."""
  leaves, treedef = jax.tree.flatten(local_c)
  rows = [multihost.host_rows(x) for x in leaves]
  slots = set(rows[0]) if rows else set()
  return {s: jax.tree.unflatten(treedef, [r[s] for r in rows])
          for s in sorted(slots) if slot_ids[s] != PAD}


class LedgerGate:
  """Attested rounds: clients sign where they live, process 0 verifies and keeps the ledger.

  Each party has its own keystore directory under `<workdir>/keys/<party>/`, created once from the
  operating system's randomness and opened only by that party's code: a hospital's by the process
  that runs it, the server's by process 0.
  """

  def __init__(self, workdir: str, *, ledger_id: str, train_names: Sequence[str],
               train_sizes: Sequence[int], local_clients: Sequence[int], backend: str,
               algorithm: str):
    self.backend = L.get_backend(backend)
    self.path = os.path.join(workdir, "ledger.jsonl")
    self.keys = os.path.join(workdir, "keys")
    self.names = list(train_names)
    self.train_sizes = [int(n) for n in train_sizes]
    self.algorithm = algorithm
    self.signers = {c: self._identity(self.names[c]) for c in local_clients}
    regs = [L.Registration.of(i, self.backend).to_dict() for i in self.signers.values()]
    everyone = [r for part in multihost.allgather_json(regs) for r in part]
    self.ledger = None
    if multihost.is_writer():
      server = self._identity("server")
      if os.path.exists(self.path):
        self.ledger = L.Ledger.open(self.path, server, self.backend)
      else:
        regs = sorted((L.Registration(r["name"], bytes.fromhex(r["pk"]), bytes.fromhex(r["pop"]))
                       for r in everyone), key=lambda r: self.names.index(r.name))
        self.ledger = L.Ledger.create(self.path, ledger_id, server, regs, self.backend)
    self._verdict: L.RoundVerdict | None = None
    self._recorded: dict[str, Any] | None = None

  def _identity(self, name: str) -> L.Identity:
    keystore = os.path.join(self.keys, name)
    stored = L.load_keystore(keystore, self.backend) if os.path.isdir(keystore) else {}
    if name in stored:
      return stored[name]
    identity = L.Identity.generate(name, os.urandom(32), self.backend)
    identity.save(keystore)
    return identity

  def _recorded_block(self, round_no: int) -> dict[str, Any] | None:
    for block in self.ledger.blocks:
      if block.get("kind") == "round" and block.get("round") == round_no:
        return block
    return None

  def admit(self, round_no, slot_ids, local_c):
    ctx, recorded = None, None
    if self.ledger is not None:
      ctx = dict(vars(self.ledger.round_context(round_no)))
      recorded = self._recorded_block(round_no)
    ctx, self._recorded = multihost.broadcast_json([ctx, recorded])
    context = L.RoundContext(**ctx)
    mine = []
    for s, update in local_updates(local_c, slot_ids).items():  # each hospital, where it lives
      c = int(slot_ids[s])
      digest = L.tree_digest(update_tensors(update))
      att = L.Attestation.create(self.signers[c], context, digest, self.train_sizes[c],
                                 self.backend)
      mine.append((s, att.to_dict(), digest.hex()))
    submissions = [sub for part in multihost.allgather_json(mine) for sub in part]
    decision = None
    if self.ledger is not None:  # the server
      accept = np.zeros(len(slot_ids), bool)
      counts = np.zeros(len(slot_ids), np.float32)
      if self._recorded is not None:  # re-running a round whose block was written before a crash
        names = {p["name"] for p in self._recorded["participants"]}
        for s, att, _ in submissions:
          accept[s] = self.names[int(slot_ids[s])] in names
          counts[s] = att["num_samples"]
      else:
        verdict = self.ledger.verify_round(round_no, [
            (L.Attestation.from_dict(att), bytes.fromhex(d)) for _, att, d in submissions])
        accepted = {a.client_id: a.num_samples for a in verdict.accepted}
        for s, att, _ in submissions:
          if att["client_id"] in accepted:
            accept[s], counts[s] = True, accepted[att["client_id"]]
        self._verdict = verdict
      decision = [accept.tolist(), counts.tolist()]
    accept, counts = multihost.broadcast_json(decision)
    return np.asarray(accept, bool), np.asarray(counts, np.float32)

  def record(self, round_no, global_lora, base):
    del base
    info = None
    if self.ledger is not None:
      host = jax.tree.map(multihost.host_value, global_lora)
      gdigest = L.tree_digest(update_tensors(host))
      if self._recorded is None:
        block = self.ledger.append_round(round_no, self._verdict.accepted, self._verdict.rejected,
                                         gdigest, self.algorithm)
      elif self._recorded["global_digest"] != gdigest.hex():
        raise L.LedgerError(f"round {round_no}: recomputed global adapter differs from the "
                            "ledger's record (non-deterministic resume?)")
      else:
        block = self._recorded
      info = {"accepted": len(block["participants"]),
              "rejected": [x["reason"] for x in block["rejected"]], "block": block["index"]}
    return multihost.broadcast_json(info)

  @property
  def head_hash(self) -> str | None:
    return None if self.ledger is None else self.ledger.head_hash

  def summary(self, adapter_file):
    if self.ledger is None:
      return {}
    digest = L.adapter_file_digest(adapter_file)
    prov = L.find_provenance(self.path, digest)
    check = L.verify_ledger(self.path)
    return {"path": self.path, "valid": check.ok, "blocks": check.num_blocks,
            "adapter_digest": digest.hex(),
            "adapter_block": None if prov is None else prov.block_index}
