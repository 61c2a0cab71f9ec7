"""The server's ledger: create/open, register clients, verify a round, append its block.

Every submission gets a receipt signed by the server (its verdict); the block of the round records
the accepted attestations with the weights the genesis rules give their signed sample counts, and
every rejection with the hash of the rejected attestation, so receipts can be checked against it.
After a round block is written its participants co-sign it (`add_cosignatures`); the next block
(or the closing block, `close`) carries that co-signature. Pending co-signatures are kept beside
the ledger (`<ledger>.cosign.json`) until that block is written, so a restart loses none.

Single writer: one `Ledger` object appends to a file at a time. Every write is one line written
with a single `write`, flushed and fsync'ed; a torn trailing line left by a crash is reported on
open (`torn_tail`) and cut off before the next append.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import operator
import os
import secrets
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from fedlora_jax.ledger import block as blk
from fedlora_jax.ledger.attestation import (
    ACCEPTED, Attestation, Receipt, Registration, RoundContext, cosign_message, membership_message,
    server_message,
)
from fedlora_jax.ledger.bls import Backend, resolve_backend
from fedlora_jax.ledger.chain import (
    ChainState, apply_block, copy_state, parse_line, registration_problem, replay_chain,
)
from fedlora_jax.ledger.errors import LedgerError, RegistrationError
from fedlora_jax.ledger.identity import Identity
from fedlora_jax.ledger.rules import applied_weights, rules_problem

log = logging.getLogger(__name__)


class Rejection(NamedTuple):
  """A submission excluded from a round: claimed client id, reason (`REJECT_REASONS`), detail,
  and the hash of the rejected attestation (`Attestation.hash`)."""

  client_id: str
  reason: str
  detail: str
  attestation_hash: str


@dataclasses.dataclass(frozen=True)
class RoundVerdict:
  """Outcome of `Ledger.verify_round`, aligned with its submissions [S].

  `outcomes[s]` is `ACCEPTED` or the rejection reason; `receipts[s]` the server's signed answer.
  """

  round: int
  submissions: tuple[Attestation, ...]
  outcomes: tuple[str, ...]
  accepted: tuple[Attestation, ...]
  rejected: tuple[Rejection, ...]
  receipts: tuple[Receipt, ...]
  weighting: str

  @property
  def accept(self) -> np.ndarray:
    """[S] bool: which submissions the aggregation may use."""
    return np.asarray([o == ACCEPTED for o in self.outcomes], bool)

  @property
  def num_samples(self) -> np.ndarray:
    """[S] int64: the signed count of each accepted submission, 0 for rejected ones (the
    `num_samples` the aggregation is given)."""
    return np.asarray([a.num_samples if o == ACCEPTED else 0
                       for a, o in zip(self.submissions, self.outcomes)], np.int64)

  @property
  def weights(self) -> np.ndarray:
    """[S] float64: normalised aggregation weights (0 for rejected), as the block records."""
    accepted = iter(blk.weights_of([a.num_samples for a in self.accepted], self.weighting))
    return np.asarray([next(accepted) if o == ACCEPTED else 0.0 for o in self.outcomes])


class CoSign(NamedTuple):
  """One participant's answer to 'co-sign block `block_hash`': its BLS signature over
  `cosign_message`, or None with the reason it refuses."""

  client_id: str
  block_hash: str
  signature: bytes | None
  reason: str = ""


def _check_registrations(regs: Sequence[Registration], taken: set[str], names: set[str],
                         backend: Backend) -> None:
  """Raises RegistrationError for the first refused registration (PoP, duplicate, name)."""
  for reg in regs:
    problem = registration_problem(reg, taken, names, backend)
    if problem is not None:
      raise RegistrationError(reg.name, problem)
    taken.add(reg.id)
    names.add(reg.name)


class Ledger:
  """An open ledger file with its verified state. Appending needs the server's secret key."""

  def __init__(self, path: Path, state: ChainState, server: Identity | None, backend: Backend,
               size: int, torn_tail: bytes) -> None:
    self.path = path
    self.backend = backend
    self.torn_tail = torn_tail
    self._state = state
    self._server = server
    self._size = size  # bytes of the verified prefix
    self._verified: tuple[int, str, set[Attestation]] | None = None
    self._cosignature: dict[str, Any] | None = None  # of the head block, once collected
    self._load_cosignature()

  # Construction.

  @classmethod
  def create(cls, path: str | os.PathLike[str], label: str, server_identity: Identity,
             clients: Sequence[Registration] = (), backend: Backend | str | None = None, *,
             rules: dict[str, Any]) -> Ledger:
    """Writes a new ledger whose genesis block registers the server and `clients` and fixes the
    job's `rules` (`rules.make_rules`).

    The ledger id is `label:nonce` with a fresh random 32-byte nonce, so attestations and blocks
    of one ledger never verify in another, even of the same config. Raises RegistrationError
    naming the first client whose registration is refused (bad PoP, duplicate key or name) and
    LedgerError when `path` exists.
    """
    backend = resolve_backend(backend)
    if not isinstance(label, str) or not label:
      raise LedgerError("ledger label must be a non-empty string")
    problem = rules_problem(rules)
    if problem is not None:
      raise LedgerError(f"ledger rules: {problem}")
    nonce = secrets.token_hex(blk.NONCE_LEN)
    ledger_id = blk.ledger_id_of(label, nonce)
    server_reg = Registration.of(server_identity, 0, backend)
    regs = [_as_registration(c) for c in clients]
    _check_registrations(regs, {server_reg.id}, {server_reg.name}, backend)
    block = {
        "index": 0, "kind": "genesis", "version": blk.FORMAT_VERSION, "ledger_id": ledger_id,
        "nonce": nonce, "prev_hash": blk.GENESIS_PREV_HASH, "server": server_reg.to_dict(),
        "registrations": [r.to_dict() for r in regs], "rules": dict(rules),
    }
    line = _seal(block, ledger_id, server_identity, backend)
    path = Path(path)
    try:
      blk.create_file(path, line)
    except FileExistsError as e:
      raise LedgerError(f"ledger {path} already exists") from e
    state = replay_chain([line[:-1]], backend, lambda i: False)  # PoPs checked above
    return cls(path, state, server_identity, backend, len(line), b"")

  @classmethod
  def open(cls, path: str | os.PathLike[str], server_identity: Identity | None = None,
           backend: Backend | str | None = None, full: bool = True) -> Ledger:
    """Opens and re-verifies a ledger (raises BlockError at the first bad block).

    With `full=False` hash links and structure are checked everywhere but signatures and PoPs
    only in the last block. A torn trailing line (crash mid-append) is ignored and reported.
    """
    backend = resolve_backend(backend)
    path = Path(path)
    if not path.is_file():
      raise LedgerError(f"no ledger file at {path}")
    lines, torn = blk.read_lines(path)
    last = len(lines) - 1
    state = replay_chain(lines, backend, (lambda i: True) if full else (lambda i: i == last))
    if torn:
      log.warning("ledger %s: ignoring a torn trailing line of %d bytes after block %d",
                  path, len(torn), last)
    if server_identity is not None and server_identity.pk != state.server.pk:
      raise LedgerError(f"{server_identity.name!r} is not this ledger's server")
    size = sum(len(line) + 1 for line in lines)
    return cls(path, state, server_identity, backend, size, torn)

  # Read-only views.

  @property
  def ledger_id(self) -> str:
    return self._state.ledger_id

  @property
  def server(self) -> Identity:
    return self._state.server

  @property
  def clients(self) -> dict[str, Identity]:
    """Registered clients by id (public identities)."""
    return dict(self._state.clients)

  @property
  def head_hash(self) -> str:
    return self._state.head_hash

  @property
  def genesis_hash(self) -> str:
    """Hex hash of block 0: with the server key, the anchor a hospital pins."""
    return self._state.blocks[0]["block_hash"]

  @property
  def last_round(self) -> int | None:
    return self._state.last_round

  @property
  def rules(self) -> dict[str, Any]:
    """The job's rules fixed by the genesis block."""
    return copy.deepcopy(self._state.rules)

  @property
  def declared(self) -> dict[str, int]:
    """Each registered client's declared dataset size, by id."""
    return dict(self._state.declared)

  @property
  def closed(self) -> bool:
    return self._state.closed

  @property
  def cosignature_due(self) -> bool:
    """Whether the head block awaits its participants' co-signature (none collected yet)."""
    head = self._state.blocks[-1]
    return (self._state.rules["cosign"] == "participants" and head["kind"] == "round"
            and bool(head["participants"]) and self._cosignature is None)

  @property
  def blocks(self) -> list[dict[str, Any]]:
    """Copies of the verified blocks, oldest first."""
    return copy.deepcopy(self._state.blocks)

  def round_context(self, round: int) -> RoundContext:
    """What clients bind their attestations for `round` to."""
    return RoundContext(self.ledger_id, _as_round(round), self.head_hash)

  # Writing.

  def membership_message(self, clients: Sequence[Registration],
                         removals: Sequence[str] = ()) -> bytes:
    """What current members sign to approve a membership change on top of the current head:
    `clients` join (or, when already members with the same name, re-declare their size),
    `removals` (member ids) leave."""
    return membership_message(self.ledger_id, self.head_hash,
                              [_as_registration(c).to_dict() for c in clients], list(removals))

  def register(self, clients: Sequence[Registration], approval: Sequence[tuple[str, bytes]],
               removals: Sequence[str] = ()) -> dict[str, Any]:
    """Appends a membership change approved by a strict majority of the current members:
    `approval` = [(member id, its signature over `membership_message(clients, removals)`)].
    Raises RegistrationError naming a refused client, LedgerError when the approval falls short
    or a removal is not a member."""
    regs = [_as_registration(c) for c in clients]
    members = self._state.clients
    redeclared = {r.id for r in regs if r.id in members and members[r.id].name == r.name}
    _check_registrations(regs, set(members) - redeclared,
                         self._state.names() - {members[i].name for i in redeclared},
                         self.backend)
    if (len(set(removals)) != len(removals) or not set(removals) <= set(members)
        or set(removals) & redeclared):
      raise LedgerError(f"removals {list(removals)} are not distinct members staying out of "
                        "this block's registrations")
    signers = [cid for cid, _ in approval]
    if (len(set(signers)) != len(signers) or not set(signers) <= set(members)
        or 2 * len(signers) <= len(members)):
      raise LedgerError(f"a membership change ({[r.name for r in regs]} in, {len(removals)} "
                        f"out) needs the approval of a majority of the {len(members)} members, "
                        f"got {len(set(signers))}")
    aggregate = self.backend.aggregate([sig for _, sig in approval])
    if not self.backend.fast_aggregate_verify([members[c].pk for c in signers],
                                              self.membership_message(regs, removals), aggregate):
      raise LedgerError("the members' approval signatures do not verify")
    return self._append({
        "index": len(self._state.blocks), "kind": "register", "prev_hash": self.head_hash,
        "registrations": [r.to_dict() for r in regs], "removals": list(removals),
        "approval": {"signers": signers, "signature": aggregate.hex()},
    })

  def add_cosignatures(self, answers: Sequence[CoSign]) -> dict[str, Any]:
    """Collects the head round block's co-signature from its participants' answers: valid
    signatures are aggregated, every other participant is listed as refused with its reason
    (its own, 'no answer', or 'co-signature does not verify'). Kept beside the ledger until the
    next block carries it. Raises LedgerError when no co-signature is due or fewer than a strict
    majority co-sign (the block is disputed: the run must not go on)."""
    head = self._state.blocks[-1]
    if not self.cosignature_due:
      raise LedgerError(f"block {head['index']} awaits no co-signature")
    message = cosign_message(self.ledger_id, head["index"], self.head_hash)
    given = {a.client_id: a for a in answers if a.block_hash == self.head_hash}
    signers, signatures, refused = [], [], []
    for p in head["participants"]:
      cid = p["client_id"]
      answer = given.get(cid)
      if answer is None:
        refused.append({"client_id": cid, "reason": "no answer"})
      elif answer.signature is None:
        refused.append({"client_id": cid, "reason": answer.reason or "refused"})
      elif not self.backend.verify(self._state.clients[cid].pk, message, answer.signature):
        refused.append({"client_id": cid, "reason": "co-signature does not verify"})
      else:
        signers.append(cid)
        signatures.append(answer.signature)
    if 2 * len(signers) <= len(head["participants"]):
      names = {c: i.name for c, i in self._state.known.items()}
      why = "; ".join(f"{names[r['client_id']]}: {r['reason']}" for r in refused)
      raise LedgerError(f"round {head['round']}: only {len(signers)} of "
                        f"{len(head['participants'])} participants co-signed block "
                        f"{head['index']} ({why})")
    self._cosignature = {"signers": signers, "refused": refused,
                         "signature": self.backend.aggregate(signatures).hex()}
    tmp = self._cosign_path.with_suffix(".tmp")
    tmp.write_text(blk.canonical_json({"block_hash": self.head_hash,
                                       "cosignature": self._cosignature}))
    os.replace(tmp, self._cosign_path)
    return copy.deepcopy(self._cosignature)

  def close(self) -> dict[str, Any]:
    """Appends the closing block: the last round's co-signature, so the head is co-signed.
    Nothing may follow it."""
    return self._append({"index": len(self._state.blocks), "kind": "close",
                         "prev_hash": self.head_hash})

  def verify_round(self, round: int, submissions: Sequence[tuple[Attestation, bytes]], *,
                   max_samples: int = 0) -> RoundVerdict:
    """Checks each (attestation, digest of the update actually received) for `round`.

    Rejections, in the order checked: 'unregistered' (unknown client id), 'replay' (another
    ledger, another round, or a previous block as prev_hash), 'digest_mismatch' (the update is
    not the one signed), 'bad_signature' (forged, malformed, or signed by another key),
    'over_cap' (a signed count above the client's declared dataset size, or above `max_samples`
    when > 0), and 'duplicate_client' (a later
    valid submission of an already accepted client). Every submission gets a signed receipt.

    Signatures: one AggregateVerify over the first submission of every client (fast path).
    Only when it fails is each of them verified on its own to find the culprits; repeated
    submissions of a client are always verified one by one.
    """
    round = self._check_next_round(round)
    server = self._signing_server()
    problems: list[tuple[str, str] | None] = []
    firsts: dict[str, Attestation] = {}
    for att, actual_digest in submissions:
      problems.append(self._precheck(att, round, actual_digest))
      if problems[-1] is None:
        firsts.setdefault(att.client_id, att)
    valid = self._verify_signatures(list(firsts.values()))
    accepted_ids: set[str] = set()
    for i, (att, _) in enumerate(submissions):
      if problems[i] is not None:
        continue
      if att not in valid and (att in firsts.values() or not self._verify_one(att)):
        problems[i] = ("bad_signature", "signature does not verify under the client's key")
      elif att.num_samples > self._state.declared[att.client_id]:
        problems[i] = ("over_cap", f"signed count {att.num_samples} exceeds the declared "
                       f"dataset size {self._state.declared[att.client_id]}")
      elif max_samples and att.num_samples > max_samples:
        problems[i] = ("over_cap", f"signed count {att.num_samples} exceeds the cap "
                       f"ledger.max_samples_per_client={max_samples}")
      elif att.client_id in accepted_ids:
        problems[i] = ("duplicate_client", "client already has an accepted attestation this "
                       "round")
      else:
        accepted_ids.add(att.client_id)
    atts = tuple(att for att, _ in submissions)
    outcomes = tuple(ACCEPTED if p is None else p[0] for p in problems)
    accepted = tuple(a for a, o in zip(atts, outcomes) if o == ACCEPTED)
    rejected = tuple(Rejection(str(a.client_id)[:128], *p, a.hash())
                     for a, p in zip(atts, problems) if p is not None)
    receipts = tuple(Receipt.create(server, self.ledger_id, round, a, o, self.backend)
                     for a, o in zip(atts, outcomes))
    self._verified = (round, self.head_hash, set(accepted))
    return RoundVerdict(round, atts, outcomes, accepted, rejected, receipts,
                        self._state.rules["weighting"])

  def append_round(self, round: int, verdict: RoundVerdict, global_digest: bytes,
                   algorithm: str, residual_digest: bytes | None = None,
                   missing: Sequence[tuple[str, str]] = (),
                   privacy: dict[str, Any] | None = None) -> dict[str, Any]:
    """Appends the block of `round` from the `verify_round` verdict of this round and head.

    The server signs the block body: participants with their signed counts and the weights the
    genesis rules give them (`rules.applied_weights`), the robust rule applied, rejections, `global_digest` (the new global adapter) and, for algorithms
    that change the base (FedEx-LoRA), `residual_digest`, and the sampled clients that did not
    reply, `missing` [(client id, reason in `MISSING_REASONS`)] (registered, not accepted; a
    bad entry raises BlockError). A round with no accepted client is recorded too (aggregate
    signature null). `privacy` (DP runs): the epsilon spent so far,
    {unit, epsilon, delta, noise_multiplier, clip, accountant} (`block.PRIVACY_KEYS`); a
    malformed or decreasing one raises BlockError before anything is written.
    """
    round = self._check_next_round(round)
    round_, head, verified = self._verified or (None, None, set())
    accepted, rejected = verdict.accepted, verdict.rejected
    if (round_ != round or verdict.round != round or head != self.head_hash
        or not set(accepted) <= verified):
      raise LedgerError(f"round {round}: accepted attestations were not verified by "
                        "verify_round for this round and head")
    if len({a.client_id for a in accepted}) != len(accepted):
      raise LedgerError(f"round {round}: a client appears twice among the accepted")
    for rej in rejected:
      if not isinstance(rej, Rejection) or rej.reason not in blk.REJECT_REASONS:
        raise LedgerError(f"round {round}: malformed rejection {rej!r}")
    for what, digest in (("global", global_digest), ("residual", residual_digest)):
      if (digest is not None or what == "global") and (
          not isinstance(digest, bytes) or len(digest) != 32):
        raise LedgerError(f"round {round}: {what} digest must be 32 bytes")
    rules = self._state.rules
    if algorithm != rules["algorithm"]:
      raise LedgerError(f"round {round}: algorithm {algorithm!r} is not the genesis rules' "
                        f"{rules['algorithm']!r}")
    clients = self._state.clients
    aggregate = self.backend.aggregate([a.signature for a in accepted]) if accepted else None
    weights = applied_weights([a.num_samples for a in accepted], rules)
    block = self._append({
        "index": len(self._state.blocks), "kind": "round", "round": round,
        "prev_hash": self.head_hash, "algorithm": algorithm,
        "participants": [
            {"client_id": a.client_id, "name": clients[a.client_id].name,
             "update_digest": a.update_digest, "num_samples": a.num_samples, "weight": w,
             "attestation_hash": a.hash()}
            for a, w in zip(accepted, weights)
        ],
        "weighting": rules["weighting"], "robust": copy.deepcopy(rules["robust"]),
        "aggregate_signature": aggregate.hex() if aggregate is not None else None,
        "global_digest": global_digest.hex(),
        "residual_digest": None if residual_digest is None else residual_digest.hex(),
        "rejected": [r._asdict() for r in rejected],
        "missing": [{"client_id": cid, "reason": reason} for cid, reason in missing],
        "privacy": None if privacy is None else dict(privacy),
    })
    self._verified = None
    return block

  def receipts_of(self, round: int) -> list[Receipt]:
    """The receipts of every submission the block of `round` records (accepted participants,
    then rejections with their reason), signed again: what a server that crashed before
    delivering them sends (BLS signing is deterministic: the same receipts as first issued)."""
    server = self._signing_server()
    for b in self._state.blocks:
      if b["kind"] == "round" and b["round"] == round:
        answers = [(p, ACCEPTED) for p in b["participants"]]
        answers += [(r, r["reason"]) for r in b["rejected"]]
        return [Receipt.issue(server, self.ledger_id, round, e["client_id"],
                              e["attestation_hash"], verdict, self.backend)
                for e, verdict in answers]
    raise LedgerError(f"no block for round {round} in {self.path}")

  # Internals.

  def _check_next_round(self, round: int) -> int:
    round = _as_round(round)
    if self.last_round is not None and round <= self.last_round:
      raise LedgerError(f"round {round} is not after the last recorded round {self.last_round}")
    return round

  def _precheck(self, att: Attestation, round: int, actual: bytes) -> tuple[str, str] | None:
    if not isinstance(att, Attestation):
      raise TypeError(f"expected an Attestation, got {type(att).__name__}")
    if not isinstance(att.client_id, str) or att.client_id not in self._state.clients:
      return "unregistered", "client id is not registered in this ledger"
    if att.ledger_id != self.ledger_id:
      return "replay", f"attestation for ledger {att.ledger_id!r}"
    if att.round != round:
      return "replay", f"attestation for round {att.round!r}"
    if att.prev_hash != self.head_hash:
      return "replay", "attestation bound to an older block"
    if not isinstance(actual, bytes) or att.update_digest != actual.hex():
      return "digest_mismatch", "received update does not match the signed digest"
    try:
      att.message()
    except ValueError as e:
      return "bad_signature", f"malformed attestation: {e}"
    return None

  def _verify_one(self, att: Attestation) -> bool:
    pk = self._state.clients[att.client_id].pk
    return self.backend.verify(pk, att.message(), att.signature)

  def _verify_signatures(self, atts: list[Attestation]) -> set[Attestation]:
    if not atts:
      return set()
    pks = [self._state.clients[a.client_id].pk for a in atts]
    try:
      aggregate = self.backend.aggregate([a.signature for a in atts])
    except ValueError:
      aggregate = None
    if aggregate is not None and self.backend.aggregate_verify(
        pks, [a.message() for a in atts], aggregate):
      return set(atts)
    log.info("aggregate verification failed; verifying %d attestations one by one", len(atts))
    return {a for a in atts if self._verify_one(a)}

  def _signing_server(self) -> Identity:
    if self._server is None or not self._server.has_secret:
      raise LedgerError("verifying and appending need the server identity with its secret key")
    return self._server

  @property
  def _cosign_path(self) -> Path:
    return self.path.with_name(self.path.name + ".cosign.json")

  def _load_cosignature(self) -> None:
    """The head's co-signature collected before a restart (ignored when it is not the head's or
    does not verify)."""
    if not self._cosign_path.is_file():
      return
    try:
      data = json.loads(self._cosign_path.read_text())
      cosig = data["cosignature"]
      head = self._state.blocks[-1]
      if data["block_hash"] != self.head_hash or head["kind"] != "round":
        return
      message = cosign_message(self.ledger_id, head["index"], self.head_hash)
      pks = [self._state.clients[c].pk for c in cosig["signers"]]
      if self.backend.fast_aggregate_verify(pks, message, bytes.fromhex(cosig["signature"])):
        self._cosignature = cosig
    except (ValueError, KeyError, TypeError):
      log.warning("ledger %s: ignoring an unreadable %s", self.path, self._cosign_path.name)

  def _append(self, block: dict[str, Any]) -> dict[str, Any]:
    if self._state.closed:
      raise LedgerError(f"ledger {self.path} is closed: nothing may follow its closing block")
    if self.cosignature_due:
      raise LedgerError(f"block {len(self._state.blocks) - 1} awaits its participants' "
                        "co-signature (add_cosignatures) before the next block")
    block["cosignature"] = self._cosignature
    line = _seal(block, self.ledger_id, self._signing_server(), self.backend)
    new_state = apply_block(copy_state(self._state), block["index"], parse_line(
        block["index"], line[:-1]), self.backend, check_sigs=False)
    on_disk = self.path.stat().st_size
    if on_disk != self._size + len(self.torn_tail):
      raise LedgerError(f"ledger {self.path} changed on disk since it was opened")
    if self.torn_tail:
      os.truncate(self.path, self._size)
      log.warning("ledger %s: cut a torn trailing line of %d bytes", self.path,
                  len(self.torn_tail))
      self.torn_tail = b""
    blk.append_line(self.path, line)
    self._size += len(line)
    self._state = new_state
    self._cosignature = None
    return copy.deepcopy(new_state.blocks[-1])


def _as_registration(client: Registration) -> Registration:
  if not isinstance(client, Registration):
    raise RegistrationError(getattr(client, "name", "?"), "expected a Registration (pk, PoP, "
                            "declared size and binding: Registration.of or enroll)")
  return client


def _seal(block: dict[str, Any], ledger_id: str, server: Identity, backend: Backend) -> bytes:
  """Adds the server signature over the body and the block hash; returns the encoded line."""
  message = server_message(ledger_id, block["index"], blk.body_hash(block))
  block["server_signature"] = server.sign(message, backend).hex()
  block["block_hash"] = blk.block_hash(block)
  return blk.encode_line(block)


def _as_round(round: int) -> int:
  """Rounds are non-negative integers (numpy integers accepted, bools not)."""
  try:
    value = operator.index(round)
  except TypeError:
    value = -1
  if isinstance(round, bool) or value < 0:
    raise LedgerError(f"round must be a non-negative integer, got {round!r}")
  return value
