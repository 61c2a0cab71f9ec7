"""Chain verification: replays blocks one by one, checking everything a block claims.

For each block: canonical JSON, its hash, the link to the previous block, its schema, the server
signature over its body, every registration's proof of possession and binding (name, key, declared
size), the genesis rules (`rules.py`) that every round block must follow (algorithm, weighting,
robust rule, privacy unit/delta/noise, round size, weights as applied, counts within the declared
sizes), the members' majority approval of a membership change after genesis (joins, re-declared
sizes, leaves), the aggregate signature
of a round's participants over their reconstructed attestation messages, the co-signature of the
previous round block by a majority of its participants (refusals listed with their reason), and
a round's `privacy` field (null, or the epsilon spent so far: it never decreases along the chain).
A closing block carries the last co-signature; nothing may follow it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

from fedlora_jax.ledger.attestation import (
    Registration, attestation_hash, attestation_message, cosign_message, membership_message,
    server_message,
)
from fedlora_jax.ledger.block import (
    FORMAT_VERSION, GENESIS_PREV_HASH, MISSING_REASONS, NONCE_LEN, PRIVACY_KEYS, PRIVACY_UNITS,
    REJECT_REASONS, block_hash, body_hash, canonical_json,
)
from fedlora_jax.ledger.bls import Backend
from fedlora_jax.ledger.errors import BlockError
from fedlora_jax.ledger.identity import Identity, check_name
from fedlora_jax.ledger.rules import (applied_weights, describe_weights, noise_multiplier_ok,
                                      rules_problem)

_COMMON = {"index", "kind", "prev_hash", "server_signature", "block_hash"}
KEYS = {
    "genesis": _COMMON | {"version", "ledger_id", "nonce", "server", "registrations", "rules"},
    # a membership change after genesis: joins and re-declared sizes (`registrations`), members
    # leaving (`removals`: ids); approval = {"signers": [member ids], "signature"} by a majority
    "register": _COMMON | {"registrations", "removals", "approval", "cosignature"},
    "round": _COMMON | {
        "round", "algorithm", "participants", "aggregate_signature", "global_digest", "rejected",
        "weighting", "residual_digest", "privacy", "robust",
        "missing",  # sampled clients that did not reply: [{"client_id", "reason"}]
        # of the previous block: {"signers": [ids], "signature", "refused": [{client_id, reason}]}
        "cosignature",
    },
    "close": _COMMON | {"cosignature"},  # after the last round: its co-signature
}
_REG_KEYS = {"name", "id", "pk", "pop", "num_samples", "binding"}
_COSIGN_KEYS = {"signers", "signature", "refused"}
_REFUSED_KEYS = {"client_id", "reason"}
_PARTICIPANT_KEYS = {"client_id", "name", "update_digest", "num_samples", "weight",
                     "attestation_hash"}
_REJECTED_KEYS = {"client_id", "reason", "detail", "attestation_hash"}
_MISSING_KEYS = {"client_id", "reason"}


@dataclasses.dataclass
class ChainState:
  """What the verified prefix of a ledger establishes."""

  ledger_id: str
  server: Identity
  clients: dict[str, Identity]  # id -> identity, the current members
  head_hash: str
  last_round: int | None
  blocks: list[dict[str, Any]]
  rules: dict[str, Any] = dataclasses.field(default_factory=dict)  # the genesis rules
  declared: dict[str, int] = dataclasses.field(default_factory=dict)  # id -> declared size
  closed: bool = False  # a closing block was recorded
  known: dict[str, Identity] = dataclasses.field(default_factory=dict)  # every id ever registered

  def names(self) -> set[str]:
    return {self.server.name} | {c.name for c in self.clients.values()}


def is_hex(value: Any, nbytes: int) -> bool:
  if not isinstance(value, str) or len(value) != 2 * nbytes:
    return False
  return all(c in "0123456789abcdef" for c in value)


def is_u64(value: Any) -> bool:
  return type(value) is int and 0 <= value < 2**64


def registration_problem(
    reg: Registration, taken_ids: Iterable[str], taken_names: Iterable[str], backend: Backend
) -> str | None:
  """Why `reg` may not join (None when it may): bad name, duplicate, or a PoP that fails."""
  try:
    check_name(reg.name)
  except ValueError as e:
    return str(e)
  if len(reg.pk) != 48 or len(reg.pop) != 96:
    return "malformed key or proof of possession"
  if reg.name in set(taken_names):
    return "name already registered"
  if reg.id in set(taken_ids):
    return "public key already registered"
  if not backend.pop_verify(reg.pk, reg.pop):
    return "proof of possession does not verify (rogue-key defence)"
  if type(reg.num_samples) is not int or not 0 <= reg.num_samples < 2**64:
    return "declared dataset size is not a non-negative integer"
  if not backend.verify(reg.pk, reg.message(), reg.binding):
    return "name, key and declared size are not bound by the key's signature"
  return None


def parse_line(index: int, line: bytes) -> dict[str, Any]:
  """Decodes one line, requiring a JSON object in canonical encoding."""
  try:
    block = json.loads(line.decode("ascii"))
  except (UnicodeDecodeError, ValueError) as e:
    raise BlockError(index, f"malformed JSON ({e})") from e
  if not isinstance(block, dict):
    raise BlockError(index, "not a JSON object")
  try:
    canonical = canonical_json(block).encode("ascii")
  except ValueError as e:
    raise BlockError(index, f"unencodable value ({e})") from e
  if canonical != line:
    raise BlockError(index, "not in canonical JSON encoding")
  return block


def _check(index: int, ok: bool, reason: str) -> None:
  if not ok:
    raise BlockError(index, reason)


def _registrations(
    index: int, entries: Any, taken: set[str], names: set[str], backend: Backend, check_sigs: bool,
    members: Mapping[str, Identity] | None = None) -> list[Registration]:
  """The entries as registrations; an entry of a current member in `members` (same key and
  name) re-declares its size."""
  _check(index, isinstance(entries, list), "registrations is not a list")
  out = []
  for entry in entries:
    _check(index, isinstance(entry, dict) and set(entry) == _REG_KEYS, "malformed registration")
    name = entry["name"]
    _check(index, isinstance(name, str), "malformed registration name")
    ok = (is_hex(entry["pk"], 48) and is_hex(entry["pop"], 96) and is_hex(entry["id"], 32)
          and is_hex(entry["binding"], 96) and is_u64(entry["num_samples"]))
    _check(index, ok, f"registration {name!r}: malformed key, id, proof, binding or size")
    reg = Registration(name, bytes.fromhex(entry["pk"]), bytes.fromhex(entry["pop"]),
                       entry["num_samples"], bytes.fromhex(entry["binding"]))
    _check(index, entry["id"] == reg.id, f"registration {name!r}: id is not sha256(pk)")
    _check(index, all(r.id != reg.id for r in out), f"registration {name!r} listed twice")
    member = (members or {}).get(reg.id)
    if member is not None and member.name == name:  # a re-declaration: not a new name or key
      taken, names = taken - {reg.id}, names - {name}
    if check_sigs:
      problem = registration_problem(reg, taken, names, backend)
    else:
      problem = None if reg.id not in taken and name not in names else "duplicate identity"
    _check(index, problem is None, f"registration {name!r}: {problem}")
    taken.add(reg.id)
    names.add(name)
    out.append(reg)
  return out


def _admit(state: ChainState, regs: Sequence[Registration]) -> None:
  for reg in regs:
    state.clients[reg.id] = state.known[reg.id] = Identity(reg.name, reg.pk)
    state.declared[reg.id] = reg.num_samples


def _check_server_signature(index: int, block: Mapping[str, Any], ledger_id: str,
                            server: Identity, backend: Backend) -> None:
  sig = block["server_signature"]
  _check(index, is_hex(sig, 96), "malformed server signature")
  message = server_message(ledger_id, index, body_hash(block))
  _check(index, backend.verify(server.pk, message, bytes.fromhex(sig)),
         "server signature does not verify")


def _check_version(block: dict[str, Any]) -> None:
  version = block.get("version")
  _check(0, is_u64(version) and version == FORMAT_VERSION,
         f"ledger format version {version!r} is not supported (this code reads format version "
         f"{FORMAT_VERSION} only)")


def _genesis(block: dict[str, Any], backend: Backend, check_sigs: bool) -> ChainState:
  _check(0, block["kind"] == "genesis", "first block is not a genesis block")
  _check(0, block["prev_hash"] == GENESIS_PREV_HASH, "genesis prev_hash is not zero")
  problem = rules_problem(block["rules"])
  _check(0, problem is None, f"genesis rules: {problem}")
  ledger_id, nonce = block["ledger_id"], block["nonce"]
  _check(0, is_hex(nonce, NONCE_LEN), "malformed genesis nonce")
  _check(0, isinstance(ledger_id, str) and ledger_id.endswith(":" + nonce)
         and len(ledger_id) > len(nonce) + 1, "ledger_id does not end with ':' + the nonce")
  taken: set[str] = set()
  names: set[str] = set()
  (server,) = _registrations(0, [block["server"]], taken, names, backend, check_sigs)
  clients = _registrations(0, block["registrations"], taken, names, backend, check_sigs)
  server_id = Identity(server.name, server.pk)
  if check_sigs:
    _check_server_signature(0, block, ledger_id, server_id, backend)
  state = ChainState(ledger_id, server_id, {}, "", None, [], rules=block["rules"],
                     known={server_id.id: server_id})
  _admit(state, clients)
  return state


def _removals(index: int, block: dict[str, Any], state: ChainState) -> list[str]:
  removals = block["removals"]
  _check(index, isinstance(removals, list) and all(
      isinstance(r, str) and r in state.clients for r in removals) and len(set(removals)) == len(
          removals), "removals are not distinct current members")
  _check(index, not set(removals) & {e.get("id") for e in block["registrations"]
                                     if isinstance(e, dict)},
         "a member both leaves and registers in one block")
  return removals


def _approval(index: int, block: dict[str, Any], state: ChainState, backend: Backend,
              check_sigs: bool) -> None:
  """A membership change after genesis: a strict majority of the current members signed the
  registrations and removals on top of the current head (never the server alone)."""
  approval = block["approval"]
  ok = isinstance(approval, dict) and set(approval) == {"signers", "signature"}
  _check(index, ok and isinstance(approval["signers"], list), "registration after genesis "
         "without the members' approval")
  signers = approval["signers"]
  _check(index, all(isinstance(s, str) and s in state.clients for s in signers)
         and len(set(signers)) == len(signers), "approval signers are not distinct members")
  _check(index, 2 * len(signers) > len(state.clients), f"registration after genesis approved by "
         f"{len(signers)} of {len(state.clients)} members, not a majority")
  _check(index, is_hex(approval["signature"], 96), "malformed approval signature")
  if check_sigs:
    message = membership_message(state.ledger_id, state.head_hash, block["registrations"],
                                 block["removals"])
    _check(index, backend.fast_aggregate_verify([state.clients[s].pk for s in signers], message,
                                                bytes.fromhex(approval["signature"])),
           "members' approval signature does not verify")


def _cosignature(index: int, cosig: Any, state: ChainState, backend: Backend,
                 check_sigs: bool) -> None:
  """The co-signature of the previous block: due when the rules ask participants to co-sign and
  that block is a round block with participants; signers and refusals are exactly those
  participants and the signers a strict majority of them."""
  prev = state.blocks[-1]
  due = (state.rules["cosign"] == "participants" and prev["kind"] == "round"
         and bool(prev["participants"]))
  if not due:
    _check(index, cosig is None, f"a co-signature of block {index - 1}, where none is due")
    return
  _check(index, isinstance(cosig, dict) and set(cosig) == _COSIGN_KEYS
         and isinstance(cosig["signers"], list) and isinstance(cosig["refused"], list),
         f"no co-signature of round block {index - 1}")
  refused = cosig["refused"]
  for r in refused:
    _check(index, isinstance(r, dict) and set(r) == _REFUSED_KEYS and isinstance(
        r["reason"], str) and bool(r["reason"]), "malformed co-signature refusal")
  signers = cosig["signers"]
  expected = [p["client_id"] for p in prev["participants"]]
  named = signers + [r["client_id"] for r in refused]
  _check(index, sorted(named, key=str) == sorted(expected) and len(set(named)) == len(named),
         f"co-signers and refusals are not exactly the participants of block {index - 1}")
  if 2 * len(signers) <= len(expected):
    why = "; ".join(f"{state.known[r['client_id']].name}: {r['reason']}" for r in refused)
    raise BlockError(index, f"only {len(signers)} of {len(expected)} participants co-signed "
                     f"block {index - 1} (refused: {why})")
  _check(index, is_hex(cosig["signature"], 96), "malformed co-signature")
  if check_sigs:
    message = cosign_message(state.ledger_id, index - 1, state.head_hash)
    _check(index, backend.fast_aggregate_verify([state.known[s].pk for s in signers], message,
                                                bytes.fromhex(cosig["signature"])),
           f"co-signature of block {index - 1} does not verify")


def _round(index: int, block: dict[str, Any], state: ChainState, backend: Backend,
           check_sigs: bool) -> None:
  r = block["round"]
  _check(index, is_u64(r), "malformed round number")
  _check(index, state.last_round is None or r > state.last_round,
         f"round {r} does not follow round {state.last_round}")
  rules = state.rules
  for field in ("algorithm", "weighting"):
    _check(index, block[field] == rules[field], f"{field} {block[field]!r} is not the genesis "
           f"rules' {rules[field]!r}")
  _check(index, block["robust"] == rules["robust"], f"robust rule {block['robust']!r} is not "
         f"the genesis rules' {rules['robust']!r}")
  _check(index, is_hex(block["global_digest"], 32), "malformed global digest")
  residual = block["residual_digest"]
  _check(index, residual is None or is_hex(residual, 32), "malformed residual digest")
  participants = block["participants"]
  _check(index, isinstance(participants, list), "participants is not a list")
  pks, messages, seen = [], [], set()
  for p in participants:
    _check(index, isinstance(p, dict) and set(p) == _PARTICIPANT_KEYS, "malformed participant")
    cid = p["client_id"]
    client = state.clients.get(cid) if isinstance(cid, str) else None
    _check(index, client is not None, f"participant {p['client_id']!r} is not registered")
    assert client is not None
    _check(index, p["name"] == client.name, f"participant {client.name!r}: wrong name")
    _check(index, client.id not in seen, f"participant {client.name!r} appears twice")
    _check(index, is_hex(p["update_digest"], 32) and is_u64(p["num_samples"]),
           f"participant {client.name!r}: malformed digest or sample count")
    _check(index, p["num_samples"] <= state.declared[cid], f"participant {client.name!r}: "
           f"signed count {p['num_samples']} exceeds its declared dataset size "
           f"{state.declared[cid]}")
    seen.add(client.id)
    pks.append(client.pk)
    messages.append(attestation_message(state.ledger_id, r, state.head_hash, client.id,
                                        p["update_digest"], p["num_samples"]))
    _check(index, p["attestation_hash"] == attestation_hash(messages[-1]),
           f"participant {client.name!r}: attestation hash does not match its fields")
  weights = applied_weights([p["num_samples"] for p in participants], rules)
  _check(index, [p["weight"] for p in participants] == weights,
         f"weights are not the {describe_weights(rules)} weights the genesis rules give the "
         "signed sample counts")
  for rej in _as_list(index, block["rejected"], "rejected"):
    ok = isinstance(rej, dict) and set(rej) == _REJECTED_KEYS
    _check(index, ok and all(isinstance(v, str) for v in rej.values()), "malformed rejection")
    _check(index, rej["reason"] in REJECT_REASONS, f"unknown rejection reason {rej['reason']!r}")
    _check(index, is_hex(rej["attestation_hash"], 32), "malformed rejected attestation hash")
  _check_missing(index, block["missing"], state, seen)
  _check(index, len(participants) + len(block["missing"]) <= rules["clients_per_round"],
         f"more clients than the genesis rules' {rules['clients_per_round']} per round")
  agg = block["aggregate_signature"]
  if not participants:
    _check(index, agg is None, "aggregate signature without participants")
  else:
    _check(index, is_hex(agg, 96), "malformed aggregate signature")
    if check_sigs:
      _check(index, backend.aggregate_verify(pks, messages, bytes.fromhex(agg)),
             "aggregate signature of the participants does not verify")
  _privacy(index, block["privacy"], state)
  if check_sigs:
    _check_server_signature(index, block, state.ledger_id, state.server, backend)
  state.last_round = r


def _check_missing(index: int, entries: Any, state: ChainState, participants: set[str]) -> None:
  """Missing clients: registered, neither a participant nor listed twice, a known reason."""
  listed: set[str] = set()
  for m in _as_list(index, entries, "missing"):
    _check(index, isinstance(m, dict) and set(m) == _MISSING_KEYS, "malformed missing entry")
    client = state.clients.get(m["client_id"]) if isinstance(m["client_id"], str) else None
    _check(index, client is not None, f"missing client {m['client_id']!r} is not registered")
    assert client is not None
    _check(index, client.id not in participants | listed,
           f"missing client {client.name!r} is also a participant or listed twice")
    _check(index, m["reason"] in MISSING_REASONS, f"unknown missing reason {m['reason']!r}")
    listed.add(client.id)


def _is_number(value: Any) -> bool:
  return type(value) in (int, float) and math.isfinite(value)


def _privacy(index: int, privacy: Any, state: ChainState) -> None:
  """null, or {unit, epsilon, delta, noise_multiplier, clip, accountant}: the privacy spent up to
  this round, which keeps the previous round's unit and delta and never decreases."""
  prev = next((b["privacy"] for b in reversed(state.blocks) if b["kind"] == "round"), None)
  rule = state.rules["privacy"]
  if privacy is None or rule is None:
    _check(index, privacy is None and rule is None, "privacy field does not follow the genesis "
           f"rules' privacy {rule!r}")
    return
  _check(index, isinstance(privacy, dict) and set(privacy) == PRIVACY_KEYS,
         f"malformed privacy field (keys: {sorted(PRIVACY_KEYS)})")
  _check(index, privacy["unit"] in PRIVACY_UNITS, f"unknown privacy unit {privacy['unit']!r}")
  eps, delta = privacy["epsilon"], privacy["delta"]
  _check(index, _is_number(eps) and eps >= 0, f"malformed privacy epsilon {eps!r}")
  _check(index, _is_number(delta) and 0 < delta < 1, f"malformed privacy delta {delta!r}")
  z, clip = privacy["noise_multiplier"], privacy["clip"]
  _check(index, noise_multiplier_ok(z) and _is_number(clip) and clip > 0,
         "malformed privacy noise multiplier or clip norm")
  _check(index, isinstance(privacy["accountant"], str) and bool(privacy["accountant"]),
         "malformed privacy accountant name")
  _check(index, (privacy["unit"], delta, z) == (rule["unit"], rule["delta"],
                                                rule["noise_multiplier"]),
         "privacy unit, delta or noise multiplier differs from the genesis rules'")
  if prev is not None:
    _check(index, eps >= prev["epsilon"], f"privacy epsilon {eps} decreases from the previous "
           f"round's {prev['epsilon']}")


def _as_list(index: int, value: Any, what: str) -> list[Any]:
  _check(index, isinstance(value, list), f"{what} is not a list")
  return value


def apply_block(state: ChainState | None, index: int, block: dict[str, Any], backend: Backend,
                check_sigs: bool = True) -> ChainState:
  """Verifies `block` as block `index` on top of `state`; returns the updated state."""
  kind = block.get("kind")
  if state is None and kind == "genesis":
    _check_version(block)
  _check(index, isinstance(kind, str) and kind in KEYS and set(block) == KEYS[kind],
         f"malformed block of kind {kind!r}")
  _check(index, is_u64(block["index"]) and block["index"] == index,
         f"block says index {block['index']!r}")
  _check(index, block["block_hash"] == block_hash(block), "block hash does not match contents")
  if state is None:
    state = _genesis(block, backend, check_sigs)
  else:
    _check(index, block["prev_hash"] == state.head_hash, "prev_hash does not link to block "
           f"{index - 1}")
    _check(index, not state.closed, "block after the closing block")
    _check(index, kind != "genesis", "genesis block after the first block")
    _cosignature(index, block["cosignature"], state, backend, check_sigs)
    if kind == "register":
      taken, names = set(state.clients), state.names()
      new = _registrations(index, block["registrations"], taken, names, backend, check_sigs,
                           state.clients)
      removals = _removals(index, block, state)
      _approval(index, block, state, backend, check_sigs)
    elif kind == "round":
      _round(index, block, state, backend, check_sigs)
    if kind != "round" and check_sigs:  # a round block's is checked last, in _round
      _check_server_signature(index, block, state.ledger_id, state.server, backend)
    if kind == "register":
      _admit(state, new)
      for cid in removals:
        del state.clients[cid], state.declared[cid]
    state.closed = kind == "close"
  state.head_hash = block["block_hash"]
  state.blocks.append(block)
  return state


def replay_chain(lines: Sequence[bytes], backend: Backend,
                 check_sigs: Callable[[int], bool] = lambda i: True) -> ChainState:
  """Verifies complete lines in order; raises BlockError at the first bad block."""
  if not lines:
    raise BlockError(0, "ledger has no complete genesis block")
  state = None
  for index, line in enumerate(lines):
    state = apply_block(state, index, parse_line(index, line), backend, check_sigs(index))
  assert state is not None
  return state


def copy_state(state: ChainState) -> ChainState:
  """A copy that `apply_block` may change without touching `state`."""
  return dataclasses.replace(state, clients=dict(state.clients), blocks=list(state.blocks),
                             declared=dict(state.declared), known=dict(state.known))
