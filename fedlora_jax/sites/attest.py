"""Every ledger call of the sites mode, in one place (the seam to swap for issue 11's API).

Built on the ledger API as committed on `main` today (`Identity`, `Attestation`,
`Registration`, `Ledger.verify_round/append_round`). Added here, until the ledger package has
them: the registry file (JSON lines of registration records), signed receipts, and recording
hospitals that did not answer a round.

Node side: `sign_update` (the hospital's own key from its own keystore), `check_receipt`.
Server side: `read_registry`, `RoundLedger` (verify all attestations of a round in one
aggregate check, append the block, issue receipts), `receipts_agree` (a hospital's audit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
from collections.abc import Sequence
from typing import Any, Mapping

from fedlora_jax import ledger as L
from fedlora_jax.ledger.block import canonical_json

RECEIPT_TAG = b"fedlora-jax/sites/receipt/v1\x00"


# --- registry (operator side, built from enrolment records sent out of band) ---------------------
def registration_record(identity: L.Identity, backend: str = "auto") -> dict[str, str]:
  """What a hospital sends the operator: name, public key, proof of possession (hex)."""
  return L.Registration.of(identity, backend).to_dict()


def read_registry(path: str, backend: str = "auto") -> list[L.Registration]:
  """Registrations from a JSON-lines file; a bad PoP, a repeated name or key is an error."""
  if not os.path.isfile(path):
    raise L.LedgerError(f"no registry file {path}")
  regs: list[L.Registration] = []
  with open(path) as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        d = json.loads(line)
        reg = L.Registration(d["name"], bytes.fromhex(d["pk"]), bytes.fromhex(d["pop"]))
      except (ValueError, KeyError, TypeError) as e:
        raise L.LedgerError(f"{path}:{i}: malformed registration ({e})") from e
      if not reg.verify(backend):
        raise L.LedgerError(f"{path}:{i}: proof of possession of {reg.name!r} does not verify")
      if any(r.name == reg.name or r.pk == reg.pk for r in regs):
        raise L.LedgerError(f"{path}:{i}: {reg.name!r} repeats a registered name or key")
      regs.append(reg)
  if not regs:
    raise L.LedgerError(f"registry {path} is empty")
  return regs


def write_registry(path: str, records: Sequence[Mapping[str, str]]) -> None:
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(dict(r), sort_keys=True) + "\n")


# --- node side ------------------------------------------------------------------------------------
def sign_update(identity: L.Identity, context: Mapping[str, Any], update_digest: bytes,
                num_samples: int, backend: str = "auto") -> dict[str, Any]:
  """The hospital's attestation of its update (a dict for the reply)."""
  ctx = L.RoundContext(str(context["ledger_id"]), int(context["round"]),
                       str(context["prev_hash"]))
  return L.Attestation.create(identity, ctx, update_digest, num_samples, backend).to_dict()


def attestation_hash(att: Mapping[str, Any]) -> str:
  """Hex SHA-256 of the canonical JSON of an attestation dict (what receipts name)."""
  return hashlib.sha256(canonical_json(dict(att)).encode("ascii")).hexdigest()


def _receipt_message(receipt: Mapping[str, Any]) -> bytes:
  body = {k: v for k, v in receipt.items() if k != "signature"}
  return RECEIPT_TAG + canonical_json(body).encode("ascii")


def check_receipt(receipt: Mapping[str, Any], server_pk: bytes, backend: str = "auto") -> bool:
  """True when the server's signature over the receipt verifies under the pinned key."""
  try:
    sig = bytes.fromhex(receipt["signature"])
  except (KeyError, ValueError, TypeError):
    return False
  return L.get_backend(backend).verify(server_pk, _receipt_message(receipt), sig)


# --- server side ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Submission:
  """One hospital's reply as received: its attestation dict and the digest of its update."""

  hospital: str
  attestation: dict[str, Any]
  digest: bytes


class RoundLedger:
  """The server's ledger for a sites run (`<workdir>/ledger.jsonl`, server key in a keystore)."""

  def __init__(self, path: str, server_keystore: str, registry: Sequence[L.Registration],
               backend: str = "auto"):
    self.backend = L.get_backend(backend)
    self.server = L.Identity.load(server_keystore, "server", self.backend)
    if os.path.exists(path):
      self.ledger = L.Ledger.open(path, self.server, self.backend)
    else:
      ledger_id = f"fedlora-jax-sites-{secrets.token_hex(16)}"  # fresh per run: no replay
      self.ledger = L.Ledger.create(path, ledger_id, self.server, list(registry), self.backend)
    self.path = path

  def context(self, round_no: int) -> dict[str, Any]:
    ctx = self.ledger.round_context(round_no)
    return {"ledger_id": ctx.ledger_id, "round": ctx.round, "prev_hash": ctx.prev_hash}

  def recorded_block(self, round_no: int) -> dict[str, Any] | None:
    return next((b for b in self.ledger.blocks
                 if b.get("kind") == "round" and b.get("round") == round_no), None)

  def verify(self, round_no: int, submissions: Sequence[Submission]
             ) -> tuple[dict[str, L.Attestation], L.RoundVerdict]:
    """All attestations of a round in one aggregate check -> ({hospital: accepted}, verdict)."""
    pairs, owner = [], {}
    for s in submissions:
      try:
        att = L.Attestation.from_dict(s.attestation)
      except (TypeError, ValueError, KeyError):
        att = L.Attestation("", round_no, "", "malformed", "", 0, b"")
      pairs.append((att, s.digest))
      owner[id(att)] = s.hospital
    verdict = self.ledger.verify_round(round_no, pairs)
    return {owner[id(a)]: a for a in verdict.accepted}, verdict

  def append(self, round_no: int, verdict: L.RoundVerdict, global_digest: bytes,
             algorithm: str) -> dict[str, Any]:
    return self.ledger.append_round(round_no, verdict.accepted, verdict.rejected, global_digest,
                                    algorithm)

  def receipts(self, block: Mapping[str, Any], submissions: Sequence[Submission]
               ) -> dict[str, dict[str, Any]]:
    """{hospital: signed receipt} for every submission, from the block as written."""
    accepted = {p["client_id"]: p["update_digest"] for p in block["participants"]}
    rejected = {r["client_id"]: r["reason"] for r in block["rejected"]}
    out = {}
    for s in submissions:
      cid = str(s.attestation.get("client_id", ""))[:128]
      verdict = ("accepted" if accepted.get(cid) == s.attestation.get("update_digest")
                 else "rejected")
      receipt = {"ledger_id": self.ledger.ledger_id, "round": block["round"],
                 "block_hash": block["block_hash"], "client_id": cid,
                 "attestation_hash": attestation_hash(s.attestation), "verdict": verdict,
                 "reason": rejected.get(cid, "") if verdict == "rejected" else ""}
      receipt["signature"] = self.server.sign(_receipt_message(receipt), self.backend).hex()
      out[s.hospital] = receipt
    return out


def receipts_agree(ledger_path: str, receipts: Sequence[Mapping[str, Any]], server_pk: bytes,
                   backend: str = "auto") -> list[str]:
  """A hospital's audit: problems (empty when every receipt is signed and its verdict is the
  block's: accepted receipts among the participants, rejected ones among the rejections)."""
  ledger = L.Ledger.open(ledger_path, backend=backend)
  if ledger.server.pk != server_pk:
    return [f"{ledger_path}: server key is not the pinned one"]
  blocks = {b["round"]: b for b in ledger.blocks if b.get("kind") == "round"}
  problems = []
  for r in receipts:
    where = f"round {r.get('round')} client {str(r.get('client_id'))[:12]}"
    block = blocks.get(r.get("round"))
    if not check_receipt(r, server_pk, backend):
      problems.append(f"{where}: receipt signature does not verify")
    elif block is None or block["block_hash"] != r["block_hash"]:
      problems.append(f"{where}: no such block in the ledger")
    elif r["verdict"] == "accepted" and r["client_id"] not in {
        p["client_id"] for p in block["participants"]}:
      problems.append(f"{where}: accepted submission omitted from the block")
    elif r["verdict"] == "rejected" and r["client_id"] not in {
        x["client_id"] for x in block["rejected"]}:
      problems.append(f"{where}: rejection not recorded in the block")
  return problems
