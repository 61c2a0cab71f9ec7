"""Chain verification: replays blocks one by one, checking everything a block claims.

For each block: canonical JSON, its hash, the link to the previous block, its schema, the server
signature over its body, every proof of possession (genesis/register blocks), the aggregate
signature of a round's participants over their reconstructed attestation messages, and a round's
`privacy` field (null, or the epsilon spent so far: it never decreases along the chain).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

from fedlora_jax.ledger.attestation import (
    Registration, attestation_hash, attestation_message, server_message,
)
from fedlora_jax.ledger.block import (
    FORMAT_VERSION, GENESIS_PREV_HASH, MISSING_REASONS, NONCE_LEN, PRIVACY_KEYS, PRIVACY_UNITS,
    REJECT_REASONS, WEIGHTINGS, block_hash, body_hash, canonical_json, weights_of,
)
from fedlora_jax.ledger.bls import Backend
from fedlora_jax.ledger.errors import BlockError
from fedlora_jax.ledger.identity import Identity, check_name

_COMMON = {"index", "kind", "prev_hash", "server_signature", "block_hash"}
KEYS = {
    "genesis": _COMMON | {"version", "ledger_id", "nonce", "server", "registrations",
                         "base_digest"},  # the frozen base every round trains over, or null
    "register": _COMMON | {"registrations"},
    "round": _COMMON | {
        "round", "algorithm", "participants", "aggregate_signature", "global_digest", "rejected",
        "weighting", "residual_digest", "privacy",
        "missing",  # sampled clients that did not reply: [{"client_id", "reason"}]
    },
}
_REG_KEYS = {"name", "id", "pk", "pop"}
_PARTICIPANT_KEYS = {"client_id", "name", "update_digest", "num_samples", "weight",
                     "attestation_hash"}
_REJECTED_KEYS = {"client_id", "reason", "detail", "attestation_hash"}
_MISSING_KEYS = {"client_id", "reason"}


@dataclasses.dataclass
class ChainState:
  """What the verified prefix of a ledger establishes."""

  ledger_id: str
  server: Identity
  clients: dict[str, Identity]  # id -> identity
  head_hash: str
  last_round: int | None
  blocks: list[dict[str, Any]]

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
    index: int, entries: Any, taken: set[str], names: set[str], backend: Backend, check_sigs: bool
) -> list[Identity]:
  _check(index, isinstance(entries, list), "registrations is not a list")
  out = []
  for entry in entries:
    _check(index, isinstance(entry, dict) and set(entry) == _REG_KEYS, "malformed registration")
    name = entry["name"]
    _check(index, isinstance(name, str), "malformed registration name")
    ok = is_hex(entry["pk"], 48) and is_hex(entry["pop"], 96) and is_hex(entry["id"], 32)
    _check(index, ok, f"registration {name!r}: malformed key, id or proof")
    reg = Registration(name, bytes.fromhex(entry["pk"]), bytes.fromhex(entry["pop"]))
    _check(index, entry["id"] == reg.id, f"registration {name!r}: id is not sha256(pk)")
    if check_sigs:
      problem = registration_problem(reg, taken, names, backend)
    else:
      problem = None if reg.id not in taken and name not in names else "duplicate identity"
    _check(index, problem is None, f"registration {name!r}: {problem}")
    taken.add(reg.id)
    names.add(name)
    out.append(Identity(reg.name, reg.pk))
  return out


def _check_server_signature(index: int, block: Mapping[str, Any], ledger_id: str,
                            server: Identity, backend: Backend) -> None:
  sig = block["server_signature"]
  _check(index, is_hex(sig, 96), "malformed server signature")
  message = server_message(ledger_id, index, body_hash(block))
  _check(index, backend.verify(server.pk, message, bytes.fromhex(sig)),
         "server signature does not verify")


def _genesis(block: dict[str, Any], backend: Backend, check_sigs: bool) -> ChainState:
  _check(0, block["kind"] == "genesis", "first block is not a genesis block")
  version = block["version"]
  _check(0, is_u64(version) and version == FORMAT_VERSION,
         f"ledger format version {version!r} is not supported (this code reads format version "
         f"{FORMAT_VERSION} only)")
  _check(0, block["prev_hash"] == GENESIS_PREV_HASH, "genesis prev_hash is not zero")
  ledger_id, nonce = block["ledger_id"], block["nonce"]
  _check(0, is_hex(nonce, NONCE_LEN), "malformed genesis nonce")
  base = block["base_digest"]
  _check(0, base is None or is_hex(base, 32), "malformed base digest")
  _check(0, isinstance(ledger_id, str) and ledger_id.endswith(":" + nonce)
         and len(ledger_id) > len(nonce) + 1, "ledger_id does not end with ':' + the nonce")
  taken: set[str] = set()
  names: set[str] = set()
  (server,) = _registrations(0, [block["server"]], taken, names, backend, check_sigs)
  clients = _registrations(0, block["registrations"], taken, names, backend, check_sigs)
  if check_sigs:
    _check_server_signature(0, block, ledger_id, server, backend)
  return ChainState(ledger_id, server, {c.id: c for c in clients}, "", None, [])


def _round(index: int, block: dict[str, Any], state: ChainState, backend: Backend,
           check_sigs: bool) -> None:
  r = block["round"]
  _check(index, is_u64(r), "malformed round number")
  _check(index, state.last_round is None or r > state.last_round,
         f"round {r} does not follow round {state.last_round}")
  _check(index, isinstance(block["algorithm"], str) and bool(block["algorithm"]),
         "malformed algorithm name")
  _check(index, is_hex(block["global_digest"], 32), "malformed global digest")
  residual = block["residual_digest"]
  _check(index, residual is None or is_hex(residual, 32), "malformed residual digest")
  weighting = block["weighting"]
  _check(index, weighting in WEIGHTINGS, f"unknown weighting {weighting!r}")
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
    seen.add(client.id)
    pks.append(client.pk)
    messages.append(attestation_message(state.ledger_id, r, state.head_hash, client.id,
                                        p["update_digest"], p["num_samples"]))
    _check(index, p["attestation_hash"] == attestation_hash(messages[-1]),
           f"participant {client.name!r}: attestation hash does not match its fields")
  weights = weights_of([p["num_samples"] for p in participants], weighting)
  _check(index, [p["weight"] for p in participants] == weights,
         f"weights are not the {weighting} weights of the signed sample counts")
  for rej in _as_list(index, block["rejected"], "rejected"):
    ok = isinstance(rej, dict) and set(rej) == _REJECTED_KEYS
    _check(index, ok and all(isinstance(v, str) for v in rej.values()), "malformed rejection")
    _check(index, rej["reason"] in REJECT_REASONS, f"unknown rejection reason {rej['reason']!r}")
    _check(index, is_hex(rej["attestation_hash"], 32), "malformed rejected attestation hash")
  _check_missing(index, block["missing"], state, seen)
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
  if privacy is None:
    _check(index, prev is None, "privacy field dropped after an earlier round reported it")
    return
  _check(index, isinstance(privacy, dict) and set(privacy) == PRIVACY_KEYS,
         f"malformed privacy field (keys: {sorted(PRIVACY_KEYS)})")
  _check(index, privacy["unit"] in PRIVACY_UNITS, f"unknown privacy unit {privacy['unit']!r}")
  eps, delta = privacy["epsilon"], privacy["delta"]
  _check(index, _is_number(eps) and eps >= 0, f"malformed privacy epsilon {eps!r}")
  _check(index, _is_number(delta) and 0 < delta < 1, f"malformed privacy delta {delta!r}")
  z, clip = privacy["noise_multiplier"], privacy["clip"]
  _check(index, _is_number(z) and z >= 0 and _is_number(clip) and clip > 0,
         "malformed privacy noise multiplier or clip norm")
  _check(index, isinstance(privacy["accountant"], str) and bool(privacy["accountant"]),
         "malformed privacy accountant name")
  if prev is not None:
    _check(index, (privacy["unit"], delta) == (prev["unit"], prev["delta"]),
           "privacy unit or delta differs from the previous round's")
    _check(index, eps >= prev["epsilon"], f"privacy epsilon {eps} decreases from the previous "
           f"round's {prev['epsilon']}")


def _as_list(index: int, value: Any, what: str) -> list[Any]:
  _check(index, isinstance(value, list), f"{what} is not a list")
  return value


def apply_block(state: ChainState | None, index: int, block: dict[str, Any], backend: Backend,
                check_sigs: bool = True) -> ChainState:
  """Verifies `block` as block `index` on top of `state`; returns the updated state."""
  kind = block.get("kind")
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
    if kind == "register":
      taken, names = set(state.clients), state.names()
      new = _registrations(index, block["registrations"], taken, names, backend, check_sigs)
      if check_sigs:
        _check_server_signature(index, block, state.ledger_id, state.server, backend)
      state.clients.update({c.id: c for c in new})
    elif kind == "round":
      _round(index, block, state, backend, check_sigs)
    else:
      raise BlockError(index, "genesis block after the first block")
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
