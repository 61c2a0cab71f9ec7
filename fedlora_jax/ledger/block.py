"""Block encoding and the JSON-lines file format.

A ledger file holds one block per line: the canonical JSON of the block (sorted keys, compact
separators, ASCII), then '\\n'. `block_hash` = SHA-256 of the canonical JSON of the block without
its `block_hash` field; the server signs the hash of the block without `block_hash` and
`server_signature` (its "body"). Bytes are lowercase hex strings.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

GENESIS_PREV_HASH = "00" * 32
# 3: round blocks record missing clients (`missing`) and DP spent (`privacy`); 4: genesis fixes the
# job's rules, registrations bind a declared dataset size, later joins carry the members' approval,
# blocks carry the participants' co-signature of the block before them, a closing block
FORMAT_VERSION = 4
REJECT_REASONS = ("unregistered", "bad_signature", "replay", "digest_mismatch", "duplicate_client",
                  "over_cap")
# why a sampled client is recorded as missing: no node of it connected, its node stopped reporting
# (killed, cut off), no reply in time, its node answered with an error, or an undecodable reply
MISSING_REASONS = ("not_connected", "unavailable", "timeout", "node_error", "malformed_reply")
WEIGHTINGS = ("num_samples", "uniform")  # how a round's aggregation weights follow from the counts
NONCE_LEN = 32
# A round block's `privacy` field (null without DP): the differential privacy spent so far.
PRIVACY_KEYS = {"unit", "epsilon", "delta", "noise_multiplier", "clip", "accountant"}
PRIVACY_UNITS = ("example", "client")  # what one neighbouring dataset adds or removes


def ledger_id_of(label: str, nonce: str) -> str:
  """A ledger's id: the operator's label and the genesis nonce (hex), so no two ledgers share it."""
  return f"{label}:{nonce}"


def weights_of(num_samples: Sequence[int], weighting: str) -> list[float]:
  """Normalised aggregation weights of the accepted participants, from their signed counts.

  'num_samples': n_i / sum(n) (all 0.0 when the sum is 0); 'uniform': 1 / k each.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
  if weighting == "uniform":
    return [1.0 / len(num_samples) for _ in num_samples]
  total = sum(num_samples)
  return [n / total if total else 0.0 for n in num_samples]


def canonical_json(obj: Any) -> str:
  """Deterministic JSON text (raises ValueError on NaN/inf)."""
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def block_hash(block: Mapping[str, Any]) -> str:
  """Hex SHA-256 of the canonical JSON of `block` minus its `block_hash` field."""
  body = {k: v for k, v in block.items() if k != "block_hash"}
  return hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()


def body_hash(block: Mapping[str, Any]) -> bytes:
  """SHA-256 of the block minus `block_hash` and `server_signature` (what the server signs)."""
  body = {k: v for k, v in block.items() if k not in ("block_hash", "server_signature")}
  return hashlib.sha256(canonical_json(body).encode("ascii")).digest()


def encode_line(block: Mapping[str, Any]) -> bytes:
  return (canonical_json(block) + "\n").encode("ascii")


def read_lines(path: str | os.PathLike[str]) -> tuple[list[bytes], bytes]:
  """Splits a ledger file into complete lines (without '\\n') and a torn trailing fragment.

  A last line without its newline is what a crash mid-append leaves; it is returned separately
  (b"" when the file ends cleanly) and is not part of the ledger.
  """
  data = Path(path).read_bytes()
  *lines, torn = data.split(b"\n")
  return lines, torn


def append_line(path: str | os.PathLike[str], line: bytes) -> None:
  """Appends one encoded block with a single write, then flush + fsync."""
  with open(path, "ab") as f:
    f.write(line)
    f.flush()
    os.fsync(f.fileno())


def create_file(path: str | os.PathLike[str], line: bytes) -> None:
  """Creates the file exclusively with its first line, fsyncs it and its directory."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  with os.fdopen(fd, "wb") as f:
    f.write(line)
    f.flush()
    os.fsync(f.fileno())
  dir_fd = os.open(Path(path).resolve().parent, os.O_RDONLY)
  try:
    os.fsync(dir_fd)
  finally:
    os.close(dir_fd)
