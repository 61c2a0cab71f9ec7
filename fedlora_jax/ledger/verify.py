"""Offline verification of a ledger file (library side of `scripts/verify_ledger.py`).

Structure and signatures alone only show that a ledger is self-consistent: anyone can make a
consistent ledger with fresh keys. Trust anchors pin it to the genuine run: the server public key
and genesis hash the run published, the operator's registry, the receipts hospitals kept (every
receipt's verdict must be in the ledger), the attestations hospitals issued (one the ledger
records as missing, omits, or rejects without a reason the verifier can confirm is a dispute),
and the hospitals' replicas (each must agree with the ledger on every block both hold).
A ledger whose rules ask participants to co-sign must end co-signed (a closing block) unless
`allow_open` (a run in progress).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from fedlora_jax.ledger import block as blk
from fedlora_jax.ledger.attestation import ACCEPTED, Attestation, Receipt, Registration
from fedlora_jax.ledger.bls import Backend, resolve_backend
from fedlora_jax.ledger.chain import ChainState, replay_chain
from fedlora_jax.ledger.errors import BlockError, LedgerError
from fedlora_jax.ledger.registry import load_registry
from fedlora_jax.ledger.replica import first_divergence
from fedlora_jax.ledger.signer import load_issued, load_receipts


class VerifyResult(NamedTuple):
  """`ok`; else the index of the first bad block and why. `torn_tail`: a crash fragment follows
  the `num_blocks` complete blocks (not part of the ledger). `receipts`: receipts checked.
  `missing`: (round, hospital name, reason) of every sampled hospital that did not reply.
  `privacy`: the last round block's privacy field (the epsilon spent by the whole run), or None.
  `refusals`: (block index, hospital name, reason) of every participant that refused to co-sign.
  `disputes`: one line per issued attestation the ledger records as missing, omits or rejects
  without a confirmable reason (both sides' evidence). `closed`: the ledger has a closing block."""

  ok: bool
  first_bad_block: int | None
  reason: str
  num_blocks: int
  torn_tail: bool
  receipts: int = 0
  missing: tuple[tuple[int, str, str], ...] = ()
  privacy: dict[str, Any] | None = None
  refusals: tuple[tuple[int, str, str], ...] = ()
  disputes: tuple[str, ...] = ()
  closed: bool = False


def verify_ledger(path: str | os.PathLike[str], backend: Backend | str | None = None, *,
                  server_public_key: bytes | str | None = None, genesis_hash: str | None = None,
                  registry: str | os.PathLike[str] | Sequence[Registration] | None = None,
                  receipts: str | os.PathLike[str] | None = None,
                  issued: str | os.PathLike[str] | None = None,
                  replicas: Sequence[str | os.PathLike[str]] = (),
                  allow_open: bool = False) -> VerifyResult:
  """Walks every block (canonical encoding, hash links, PoPs and bindings, server, aggregate
  and co-signatures, the genesis rules), then checks the anchors given: pinned key and genesis,
  registry, `receipts` (a directory of a hospital's receipts), `issued` (a directory holding
  hospitals' `issued.jsonl` files: disputes), `replicas` (hospitals' copies of the ledger).

  Raises LedgerError when there is no file at `path` (or at `registry` / `receipts` / `issued`
  / a replica), or when one of those is malformed.
  """
  path = Path(path)
  if not path.is_file():
    raise LedgerError(f"no ledger file at {path}")
  backend = resolve_backend(backend)
  regs = load_registry(registry, backend) if isinstance(registry, (str, os.PathLike)) else registry
  answers = load_receipts(receipts) if receipts is not None else None
  if issued is not None and not Path(issued).is_dir():
    raise LedgerError(f"no directory of issued attestations at {issued}")
  attestations = load_issued(issued) if issued is not None else None
  copies = []
  for replica in replicas:
    if not Path(replica).is_file():
      raise LedgerError(f"no replica file at {replica}")
    copies.append((Path(replica), blk.read_lines(replica)[0]))
  lines, torn = blk.read_lines(path)
  try:
    state = replay_chain(lines, backend)
  except BlockError as e:
    return VerifyResult(False, e.index, e.reason, e.index, bool(torn))
  closed = state.closed
  fail = lambda problem: VerifyResult(False, problem[0], problem[1], len(lines), bool(torn),
                                      closed=closed)
  problem = (_anchor_problem(state, server_public_key, genesis_hash, regs)
             or _replica_problem(lines, copies)
             or (None if allow_open else _open_head_problem(state)))
  if problem is None and answers is not None:
    problem = _receipt_problem(state, answers, backend)
  if problem is not None:
    return fail(problem)
  disputes = () if attestations is None else _disputes(state, attestations, backend)
  if attestations is not None and not any(a.ledger_id == state.ledger_id for a in attestations):
    return fail((0, f"no attestation issued for this ledger ({state.ledger_id}) under {issued}"))
  if disputes:
    return fail((len(lines) - 1, f"{len(disputes)} dispute(s); first: {disputes[0]}"))._replace(
        disputes=disputes)
  names = {cid: c.name for cid, c in state.known.items()}
  missing = tuple((b["round"], names[m["client_id"]], m["reason"])
                  for b in state.blocks if b["kind"] == "round" for m in b["missing"])
  refusals = tuple((b["index"] - 1, names[r["client_id"]], r["reason"])
                   for b in state.blocks if b.get("cosignature") for r in b["cosignature"]["refused"])
  rounds = [b for b in state.blocks if b["kind"] == "round"]
  return VerifyResult(True, None, "ok", len(lines), bool(torn), len(answers or ()), missing,
                      rounds[-1]["privacy"] if rounds else None, refusals, (), closed)


def _open_head_problem(state: ChainState) -> tuple[int, str] | None:
  """A co-signed ledger without its closing block: the run is in progress, was interrupted, or
  the ledger was cut back (a head round without participants has nothing to co-sign, so only
  the closing block shows the ledger is whole)."""
  if state.rules["cosign"] == "participants" and not state.closed:
    head = state.blocks[-1]
    what = f"round {head['round']}" if head["kind"] == "round" else head["kind"]
    return head["index"], (f"no closing block after the head block ({what}): a run in progress, "
                           "interrupted or cut back (allow_open accepts a run in progress)")
  return None


def _replica_problem(lines: Sequence[bytes],
                     copies: Sequence[tuple[Path, list[bytes]]]) -> tuple[int, str] | None:
  """The first block where a hospital's copy and the ledger differ, or a block only the copy
  holds (the ledger was cut back)."""
  for replica, copy in copies:
    index = first_divergence(lines, copy)
    if index is not None:
      return index, f"replica {replica} diverges from the ledger at block {index}"
    if len(copy) > len(lines):
      return len(lines), (f"replica {replica} holds block {len(lines)} that the ledger lacks "
                          f"({len(copy)} blocks vs {len(lines)}: the ledger was cut back)")
  return None


def _disputes(state: ChainState, attestations: Sequence[Attestation],
              backend: Backend) -> tuple[str, ...]:
  """Every attestation a registered hospital signed for this ledger (its signature verifies)
  that the round's block records as missing, omits, or rejects for a reason the attestation
  does not confirm ('replay': another head or round; 'unregistered': not a member at the end of
  the chain; 'over_cap': above the declared size;
  'duplicate_client': the hospital has another accepted attestation)."""
  rounds = {b["round"]: b for b in state.blocks if b["kind"] == "round"}
  out = []
  for att in attestations:
    client = state.known.get(att.client_id) if isinstance(att.client_id, str) else None
    if att.ledger_id != state.ledger_id or client is None:
      continue
    try:
      genuine = backend.verify(client.pk, att.message(), att.signature)
    except ValueError:
      genuine = False
    if not genuine:
      continue
    evidence = (f"{client.name!r} signed attestation {att.hash()[:16]}... for round {att.round} "
                f"(update {att.update_digest[:16]}..., {att.num_samples} samples, head "
                f"{att.prev_hash[:16]}...)")
    block = rounds.get(att.round)
    if block is None:
      if state.closed or (state.last_round is not None and att.round < state.last_round):
        out.append(f"{evidence}; the ledger has no block for round {att.round}")
      continue
    mine = [p for p in block["participants"] if p["client_id"] == att.client_id]
    if any(p["attestation_hash"] == att.hash() for p in mine):
      continue
    fresh = att.prev_hash == block["prev_hash"]
    rejected = [r for r in block["rejected"] if r["attestation_hash"] == att.hash()]
    if rejected:
      reason = rejected[0]["reason"]
      confirmed = ((reason == "replay" and not fresh)
                   or (reason == "unregistered" and att.client_id not in state.clients)
                   or (reason == "over_cap" and att.num_samples > state.declared.get(
                       att.client_id, -1))
                   or (reason == "duplicate_client" and bool(mine)))
      if not confirmed:
        out.append(f"{evidence}; block {block['index']} rejects it as {reason} "
                   f"({rejected[0]['detail']})")
      continue
    if mine or not fresh:
      continue  # the hospital has another accepted attestation, or this one is stale
    gone = [m["reason"] for m in block["missing"] if m["client_id"] == att.client_id]
    out.append(f"{evidence}; block {block['index']} records it missing ({gone[0]})" if gone
               else f"{evidence}; block {block['index']} omits it")
  return tuple(out)


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
  names = {cid: c.name for cid, c in state.known.items()}
  if not answers:
    return 0, "no receipt to check in the receipts directory"
  for path, receipt in answers:
    if receipt.ledger_id != state.ledger_id:
      return 0, (f"receipt {path} is for ledger {receipt.ledger_id!r}, not this ledger "
                 f"{state.ledger_id!r}")
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
