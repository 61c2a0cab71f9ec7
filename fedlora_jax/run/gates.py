"""Between local training and aggregation: who is accepted, with what weight, and the record.

A gate sees each client's trained update where it lives (the process holding that hospital),
decides on process 0 (the server), and returns the same [S] accept mask and sample counts to every
process, since aggregation is one SPMD program. `OpenGate` accepts every trained client with its
training-set size; `LedgerGate` has each client sign an attestation of its update's digest and
count, verifies all of them on the server in one aggregate check, weights by the signed counts
under the job's rules (fixed in the genesis block, `ledger_rules`), appends the round's block to
the ledger, and has the round's participants check and co-sign it where they live.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from flax import traverse_util

from fedlora_jax import ledger as L
from fedlora_jax import models
from fedlora_jax.federated.round import PAD
from fedlora_jax.ledger.signer import REPLICA_FILE
from fedlora_jax.run import multihost


class Gate(Protocol):

  def admit(self, round_no: int, slot_ids: np.ndarray, local_c: Any
            ) -> tuple[np.ndarray, np.ndarray]:
    """([S] accept, [S] sample counts) for round `round_no` (1-based) on every process."""

  def record(self, round_no: int, global_lora: Any, base: Any,
             privacy: dict[str, Any] | None = None) -> dict[str, Any]:
    """The round's record after aggregation (what metrics.jsonl shows under "ledger");
    `privacy`: the block's privacy field (DP runs)."""

  def summary(self, adapter_file: str | None) -> dict[str, Any]:
    """What summary.json shows under "ledger" ({} without a ledger)."""

  def close(self) -> None:
    """After the last round, on every process: the ledger's closing block."""


class OpenGate:
  """No ledger: every trained client is accepted, weighted by its training-set size."""

  def __init__(self, train_sizes: Sequence[int]):
    self.train_sizes = np.asarray(train_sizes, np.float32)

  def admit(self, round_no, slot_ids, local_c):
    del round_no, local_c
    real = slot_ids != PAD
    return real, np.where(real, self.train_sizes[np.maximum(slot_ids, 0)], 0.0)

  def record(self, round_no, global_lora, base, privacy=None):
    del round_no, global_lora, base, privacy
    return {}

  def summary(self, adapter_file):
    del adapter_file
    return {}

  def close(self):
    pass


def ledger_rules(cfg, noise_multiplier: float | list[float], clients_per_round: int,
                 base_digest: str | None = None, expected_clients: float = 0.0
                 ) -> dict[str, Any]:
  """The job's rules the genesis block fixes (`ledger.rules`), from the run's config: algorithm,
  weighting, robust rule and its parameters, DP unit / delta / noise multiplier, round size (the
  cap m_max under Poisson client sampling), DP-FedAvg's divisor q N there (`expected_clients`,
  0: none), and the frozen base's digest (`base_digest`, on the process that writes the
  ledger)."""
  f, dp = cfg.fed, cfg.privacy
  return L.make_rules(
      algorithm=f.algorithm, weighting="uniform" if f.uniform_weights else "num_samples",
      robust_rule=f.robust_rule, robust_f=f.robust_f, norm_bound=f.robust_norm_bound,
      gm_nu=f.robust_gm_nu, gm_iters=f.robust_gm_iters,
      privacy_unit=None if dp.level == "none" else dp.level, delta=dp.delta,
      noise_multiplier=noise_multiplier, clients_per_round=clients_per_round,
      expected_clients=expected_clients if dp.level == "client" and expected_clients else None,
      base_digest=base_digest)


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


def base_tensors(base: Any) -> dict[str, np.ndarray]:
  """{HF tensor name: array} of the base params (what `save_hf_checkpoint` writes), from this
  process's own shards; a quantized weight as its codes and scales, "<name>.<kind>_codes" and
  "<name>.<kind>_scale"."""
  out = {}
  for path, v in traverse_util.flatten_dict(models.unstack_layers(base)).items():
    name = ".".join(str(k) for k in path)
    if isinstance(v, models.QuantizedWeight):
      out[f"{name}.{v.kind}_codes"] = multihost.host_value(v.codes)
      out[f"{name}.{v.kind}_scale"] = multihost.host_value(v.scale)
    else:
      out[name] = multihost.host_value(v)
  return out


def base_digest(base: Any) -> str:
  """Hex `tree_digest` of `base_tensors`: the frozen base exactly as the rounds use it (quantized
  when it is), which the ledger's genesis binds."""
  return L.tree_digest(base_tensors(base)).hex()


def _registrations(ledger_cfg, keystores: str, local: dict[str, int],
                   backend) -> list[L.Registration] | None:
  """The genesis registrations, on process 0: the operator's registry file, or (simulation)
  every hospital enrolling itself in its own keystore on the process that runs it, declaring its
  training-set size (`local`: name -> size)."""
  if ledger_cfg.registry:
    return L.load_registry(os.path.expanduser(ledger_cfg.registry), backend) if (
        multihost.is_writer()) else None
  mine = [L.enroll(n, os.path.join(keystores, n), size, backend).to_dict()
          for n, size in local.items()]
  return [L.Registration.from_dict(r) for part in multihost.allgather_json(mine) for r in part]


class LedgerGate:
  """Attested rounds: each hospital signs where it lives, process 0 verifies and keeps the ledger.

  Every party has its own keystore (keys from the operating system's randomness): the server's
  under `<workdir>/keys/server/`, opened only by process 0's `LedgerServer`; each hospital's under
  `ledger.keystores` (default `<workdir>/keys`)`/<hospital>/`, opened only by the `HospitalSigner`
  on the process that runs that hospital, which also checks and keeps the server's receipts,
  its copy of the ledger and the attestations it issued (`<workdir>/receipts/<hospital>/`).
  Aggregation weights are the signed sample counts of the accepted attestations under `rules`
  (`ledger_rules`), each capped by the hospital's declared size. After each block the round's
  participants check it against what they sent and received and co-sign it (`_cosign`); `close`
  writes the closing block. For an algorithm that changes the base (FedEx-LoRA), each block also
  binds the digest of the base's change since the start (`original_base`, HF-named tensors).
  """

  def __init__(self, workdir: str, ledger_cfg, *, label: str, rules: dict[str, Any],
               train_names: Sequence[str], train_sizes: Sequence[int],
               local_clients: Sequence[int],
               original_base: dict[str, np.ndarray] | None = None):
    backend = L.get_backend(ledger_cfg.backend)
    self.backend = backend
    self.names = list(train_names)
    self.train_sizes = [int(n) for n in train_sizes]
    self.algorithm = rules["algorithm"]
    self.original_base = original_base
    self.receipts = os.path.join(workdir, "receipts")
    keystores = os.path.expanduser(ledger_cfg.keystores) or os.path.join(workdir, "keys")
    regs = _registrations(ledger_cfg, keystores,
                          {self.names[c]: self.train_sizes[c] for c in local_clients}, backend)
    self.server: L.LedgerServer | None = None

    def open_server():
      missing = sorted(set(self.names) - {r.name for r in regs})
      if missing:
        raise L.LedgerError(f"ledger.registry {ledger_cfg.registry} has no registration for "
                            f"{missing}")
      self.server = L.LedgerServer.open_or_create(
          os.path.join(workdir, "ledger.jsonl"), os.path.join(workdir, "keys", "server"), regs,
          label=label, rules=rules, max_samples_per_client=ledger_cfg.max_samples_per_client,
          backend=backend)
      logging.info("ledger %s: server public key %s, genesis hash %s", self.server.path,
                   self.server.server_public_key.hex(), self.server.genesis_hash)
      return {**self.server.info(),
              "registered": {r["name"]: r["pk"] for r in self.server.ledger.blocks[0][
                  "registrations"]}}

    self.info = multihost.on_writer(open_server)
    registered = self.info.pop("registered")
    self.signers = {c: L.HospitalSigner(self.names[c], os.path.join(keystores, self.names[c]),
                                        os.path.join(self.receipts, self.names[c]),
                                        bytes.fromhex(self.info["server_public_key"]), backend,
                                        genesis_hash=self.info["genesis_hash"])
                    for c in local_clients}
    wrong = [s.name for s in self.signers.values() if s.public_key.hex() != registered[s.name]]
    if wrong:
      raise L.LedgerError(f"keystores of {wrong} do not hold the registered keys")
    self._admission: L.Admission | None = None  # process 0's, of the round being run

  @property
  def head_hash(self) -> str | None:
    return None if self.server is None else self.server.head_hash

  def admit(self, round_no, slot_ids, local_c):
    ctx = L.RoundContext.from_dict(multihost.on_writer(
        lambda: self.server.round_context(round_no).to_dict()))
    mine = []
    for s, update in local_updates(local_c, slot_ids).items():  # each hospital, where it lives
      c = int(slot_ids[s])
      digest = L.tree_digest(update_tensors(update))
      att = self.signers[c].attest(ctx, digest, self.train_sizes[c])
      mine.append((s, att.to_dict(), digest.hex()))
    submissions = [sub for part in multihost.allgather_json(mine) for sub in part]
    decision = multihost.on_writer(lambda: self._verify(round_no, len(slot_ids), submissions))
    for s, receipt in decision["receipts"].items():  # back to each hospital, where it lives
      c = int(slot_ids[int(s)])
      if c in self.signers:
        self.signers[c].accept_receipt(L.Receipt.from_dict(receipt))
    return np.asarray(decision["accept"], bool), np.asarray(decision["counts"], np.float32)

  def _verify(self, round_no: int, num_slots: int, submissions) -> dict[str, Any]:
    """The server's decision over [S] slots: accept, signed counts, a receipt per submission
    (none when the round's block was written before a crash: `LedgerServer.verify_or_replay`)."""
    accept, counts, receipts = [False] * num_slots, [0] * num_slots, {}
    self._admission = self.server.verify_or_replay(round_no, [
        (L.Attestation.from_dict(att), bytes.fromhex(d)) for _, att, d in submissions])
    for (s, _, _), ok, n in zip(submissions, self._admission.accept,
                                self._admission.num_samples):
      accept[s], counts[s] = bool(ok), int(n)
    for (s, _, _), receipt in zip(submissions, self._admission.receipts):
      receipts[s] = receipt.to_dict()
    return {"accept": accept, "counts": counts, "receipts": receipts}

  def record(self, round_no, global_lora, base, privacy=None):
    gdigest = L.tree_digest(update_tensors(jax.tree.map(multihost.host_value, global_lora)))

    def append():
      residual = (None if self.original_base is None
                  else L.residual_digest(base_tensors(base), self.original_base))
      return L.round_outcome(self.server.record_or_check(
          round_no, self._admission, gdigest, self.algorithm, residual, privacy=privacy))
    record = multihost.on_writer(append)
    record["refused"] = self._cosign(gdigest)
    return record

  def _cosign(self, global_digest: bytes) -> dict[str, str]:
    """The client/server seam of co-signing, when the head block awaits it: the server sends
    each participant the blocks its replica lacks; each hospital, where it lives, checks them
    against what it sent and `global_digest` (the digest of the global adapter it received) and
    answers with its co-signature or its reason to refuse; the server keeps the aggregate for
    the next block. Returns {hospital: reason} of the refusals."""
    first, sent = self._send_blocks(lambda ledger: ledger.cosignature_due)
    if sent is None:
      return {}
    names = {p["name"] for p in sent[-1]["participants"]}
    mine = []
    for signer in self.signers.values():  # each hospital, where it lives
      if signer.name in names:
        answer = signer.cosign(sent[len(signer.replica) - first:], global_digest)
        mine.append({**answer._asdict(), "signature": answer.signature and answer.signature.hex()})
    answers = [L.CoSign(a["client_id"], a["block_hash"],
                        a["signature"] and bytes.fromhex(a["signature"]), a["reason"])
               for part in multihost.allgather_json(mine) for a in part]

    def collect():
      cosig = self.server.add_cosignatures(answers)
      clients = self.server.ledger.clients
      return {clients[r["client_id"]].name: r["reason"] for r in cosig["refused"]}
    return multihost.on_writer(collect)

  def _send_blocks(self, due) -> tuple[int, list[dict[str, Any]] | None]:
    """(first index, the blocks every local replica lacks) when `due(ledger)` on the server,
    else (0, None); every process takes part."""
    sizes = [n for part in multihost.allgather_json([len(s.replica) for s in self.signers.values()])
             for n in part]

    def blocks():
      if not due(self.server.ledger):
        return None
      first = min(sizes, default=0)
      return {"first": first, "blocks": self.server.blocks_since(first)}
    sent = multihost.on_writer(blocks)
    return (0, None) if sent is None else (sent["first"], sent["blocks"])

  def close(self):
    """The closing block (once), then every hospital's replica receives what it lacks."""
    def close_once(ledger):
      if not ledger.closed:
        ledger.close()
      return True
    first, sent = self._send_blocks(close_once)
    for signer in self.signers.values():
      signer.receive(sent[len(signer.replica) - first:])

  def summary(self, adapter_file):
    """Provenance of the exported adapter and the ledger checked against its own anchors and
    the hospitals' receipts (process 0)."""
    digest = L.adapter_file_digest(adapter_file)
    anchors = {k: self.info[k] for k in ("server_public_key", "genesis_hash")}
    prov = L.find_provenance(self.server.path, digest, **anchors)
    receipts = self.receipts if os.path.isdir(self.receipts) else None
    replicas = sorted(str(p) for p in Path(self.receipts).glob(f"*/{REPLICA_FILE}"))
    check = L.verify_ledger(self.server.path, **anchors, receipts=receipts, issued=receipts,
                            replicas=replicas)
    if not check.ok:
      logging.warning("ledger %s does not verify: %s", self.server.path, check.reason)
    return {"path": str(self.server.path), "valid": check.ok, "blocks": check.num_blocks,
            "receipts": check.receipts, "replicas": len(replicas),
            "refusals": [list(r) for r in check.refusals], "adapter_digest": digest.hex(),
            "adapter_block": None if prov is None else prov.block_index, **self.info}
