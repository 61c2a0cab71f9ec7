"""Offline verification of a ledger file (library side of `scripts/verify_ledger.py`).

Structure and signatures alone only show that a ledger is self-consistent: anyone can make a
consistent ledger with fresh keys. Trust anchors pin it to the genuine run: the server public key
and genesis hash the run published, the operator's registry, and the receipts hospitals kept
(every receipt's verdict must be in the ledger).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from fedlora_jax.ledger import block as blk
from fedlora_jax.ledger.attestation import ACCEPTED, Receipt, Registration
from fedlora_jax.ledger.bls import Backend, resolve_backend
from fedlora_jax.ledger.chain import ChainState, replay_chain
from fedlora_jax.ledger.errors import BlockError, LedgerError
from fedlora_jax.ledger.registry import load_registry
from fedlora_jax.ledger.signer import load_receipts


class VerifyResult(NamedTuple):
  """`ok`; else the index of the first bad block and why. `torn_tail`: a crash fragment follows
  the `num_blocks` complete blocks (not part of the ledger). `receipts`: receipts checked.
  `missing`: (round, hospital name, reason) of every sampled hospital that did not reply.
  `privacy`: the last round block's privacy field (the epsilon spent by the whole run), or None."""

  ok: bool
  first_bad_block: int | None
  reason: str
  num_blocks: int
  torn_tail: bool
  receipts: int = 0
  missing: tuple[tuple[int, str, str], ...] = ()
  privacy: dict[str, Any] | None = None


def verify_ledger(path: str | os.PathLike[str], backend: Backend | str | None = None, *,
                  server_public_key: bytes | str | None = None, genesis_hash: str | None = None,
                  registry: str | os.PathLike[str] | Sequence[Registration] | None = None,
                  receipts: str | os.PathLike[str] | None = None) -> VerifyResult:
  """Walks every block (canonical encoding, hash links, PoPs, server and aggregate signatures,
  weights from signed counts), then checks the anchors given.

  Raises LedgerError when there is no file at `path` (or at `registry` / `receipts`), or when
  one of those is malformed.
  """
  path = Path(path)
  if not path.is_file():
    raise LedgerError(f"no ledger file at {path}")
  backend = resolve_backend(backend)
  regs = load_registry(registry, backend) if isinstance(registry, (str, os.PathLike)) else registry
  answers = load_receipts(receipts) if receipts is not None else []
  lines, torn = blk.read_lines(path)
  try:
    state = replay_chain(lines, backend)
  except BlockError as e:
    return VerifyResult(False, e.index, e.reason, e.index, bool(torn))
  problem = _anchor_problem(state, server_public_key, genesis_hash, regs)
  if problem is None:
    problem = _receipt_problem(state, answers, backend)
  if problem is not None:
    return VerifyResult(False, problem[0], problem[1], len(lines), bool(torn))
  checked = sum(r.ledger_id == state.ledger_id for _, r in answers)
  missing = tuple((b["round"], state.clients[m["client_id"]].name, m["reason"])
                  for b in state.blocks if b["kind"] == "round" for m in b["missing"])
  rounds = [b for b in state.blocks if b["kind"] == "round"]
  return VerifyResult(True, None, "ok", len(lines), bool(torn), checked, missing,
                      rounds[-1]["privacy"] if rounds else None)


def _anchor_problem(state: ChainState, server_pk: bytes | str | None, genesis_hash: str | None,
                    regs: Sequence[Registration] | None) -> tuple[int, str] | None:
  if server_pk is not None:
    want = server_pk if isinstance(server_pk, str) else server_pk.hex()
    if state.server.pk.hex() != want.lower():
      return 0, (f"server key {state.server.pk.hex()[:16]}... does not match "
                 f"--server_public_key {want[:16]}...")
  got = state.blocks[0]["block_hash"]
  if genesis_hash is not None and got != genesis_hash.lower():
    return 0, f"genesis hash {got[:16]}... does not match --genesis_hash {genesis_hash[:16]}..."
  if regs is not None:
    known = {r.name: r.pk for r in regs}
    for block in state.blocks:
      for entry in block.get("registrations", []):
        if known.get(entry["name"], b"").hex() != entry["pk"]:
          return block["index"], (f"client {entry['name']!r} is not in the registry with this "
                                  "public key")
    genesis = {e["name"] for e in state.blocks[0]["registrations"]}
    missing = sorted(set(known) - genesis)
    if missing:
      return 0, f"registry entries {missing} are missing from the genesis block"
  return None


def _receipt_problem(state: ChainState, answers: list[tuple[Path, Receipt]],
                     backend: Backend) -> tuple[int, str] | None:
  """The first receipt whose verdict the ledger omits or contradicts."""
  rounds = {b["round"]: b for b in state.blocks if b["kind"] == "round"}
  names = {cid: c.name for cid, c in state.clients.items()}
  for path, receipt in answers:
    if receipt.ledger_id != state.ledger_id:
      continue  # another ledger's receipt (ids carry a random nonce: never confused)
    if not receipt.verify(state.server.pk, backend):
      return len(state.blocks), f"receipt {path}: not signed by this ledger's server"
    who = (f"{names.get(receipt.client_id, receipt.client_id[:16])!r} round {receipt.round} "
           f"({receipt.verdict})")
    block = rounds.get(receipt.round)
    if block is None:
      return len(state.blocks), f"receipt of {who} omitted: no block for round {receipt.round}"
    found = _verdict_in(block, receipt)
    if found is None:
      return block["index"], f"receipt of {who} omitted from the block"
    if found != receipt.verdict:
      return block["index"], f"receipt of {who} contradicted: the block says {found}"
  return None


def _verdict_in(block: dict[str, Any], receipt: Receipt) -> str | None:
  """What `block` says about the receipt's submission: ACCEPTED, a reason, or None (absent)."""
  for p in block["participants"]:
    if p["attestation_hash"] == receipt.attestation_hash and p["client_id"] == receipt.client_id:
      return ACCEPTED
  for r in block["rejected"]:
    if r["attestation_hash"] == receipt.attestation_hash and r["client_id"] == receipt.client_id:
      return r["reason"]
  return None
