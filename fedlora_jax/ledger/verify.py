"""Offline verification of a ledger file (library side of `scripts/verify_ledger.py`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from fedlora_jax.ledger import block as blk
from fedlora_jax.ledger.bls import Backend, resolve_backend
from fedlora_jax.ledger.chain import replay_chain
from fedlora_jax.ledger.errors import BlockError, LedgerError


class VerifyResult(NamedTuple):
  """`ok`; else the index of the first bad block and why. `torn_tail`: a crash fragment was
  ignored after the `num_blocks` valid blocks."""

  ok: bool
  first_bad_block: int | None
  reason: str
  num_blocks: int
  torn_tail: bool


def verify_ledger(path: str | os.PathLike[str],
                  backend: Backend | str | None = None) -> VerifyResult:
  """Walks every block: canonical encoding, hash links, PoPs, server and aggregate signatures.

  Raises LedgerError only when there is no file at `path`.
  """
  path = Path(path)
  if not path.is_file():
    raise LedgerError(f"no ledger file at {path}")
  lines, torn = blk.read_lines(path)
  try:
    replay_chain(lines, resolve_backend(backend))
  except BlockError as e:
    return VerifyResult(False, e.index, e.reason, e.index, bool(torn))
  return VerifyResult(True, None, "ok", len(lines), bool(torn))
