"""A hospital's own append-only copy of the ledger.

Every block the hospital receives is verified in full (hash link, signatures, genesis rules,
co-signatures) on top of its copy before it is appended, so the copy only ever grows by blocks
that extend it. A block at an index the copy already holds must be byte-identical: a server that
rewrote or forked the chain is caught at that index. `first_divergence` compares two copies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from fedlora_jax.ledger import block as blk
from fedlora_jax.ledger.bls import Backend, resolve_backend
from fedlora_jax.ledger.chain import ChainState, apply_block, copy_state, parse_line, replay_chain
from fedlora_jax.ledger.errors import BlockError, LedgerError


class Replica:
  """The copy at `path` (created with the first block received). `genesis_hash`: the anchor the
  hospital pinned; the copy's block 0 must have it."""

  def __init__(self, path: str | os.PathLike[str], backend: Backend | str | None = None,
               genesis_hash: str | None = None) -> None:
    self.path = Path(path)
    self.backend = resolve_backend(backend)
    self.genesis_hash = genesis_hash
    self.lines: list[bytes] = []
    self.state: ChainState | None = None
    if self.path.is_file():
      lines, torn = blk.read_lines(self.path)
      if torn:
        raise LedgerError(f"replica {self.path}: torn trailing line after block {len(lines) - 1}")
      try:
        self.state = replay_chain(lines, self.backend)
      except BlockError as e:
        raise LedgerError(f"replica {self.path}: {e}") from e
      self.lines = lines

  def __len__(self) -> int:
    return len(self.lines)

  @property
  def head_hash(self) -> str | None:
    return None if self.state is None else self.state.head_hash

  def extend(self, blocks: Sequence[Mapping[str, Any]]) -> None:
    """Appends `blocks` (consecutive, any prefix of them already held); raises LedgerError
    naming the block that differs from the copy, leaves a gap, or fails verification."""
    for block in blocks:
      line = blk.encode_line(block)[:-1]
      index = block.get("index")
      if not isinstance(index, int) or index > len(self.lines):
        raise LedgerError(f"replica {self.path}: block {index!r} does not follow its "
                          f"{len(self.lines)} blocks")
      if index < len(self.lines):
        if self.lines[index] != line:
          raise LedgerError(f"replica {self.path}: block {index} differs from this hospital's "
                            "copy (the chain was rewritten or forked)")
        continue
      try:
        parsed = parse_line(index, line)
        state = apply_block(None if self.state is None else copy_state(self.state), index,
                            parsed, self.backend)
      except BlockError as e:
        raise LedgerError(f"replica {self.path}: {e}") from e
      if index == 0 and self.genesis_hash is not None and (
          parsed["block_hash"] != self.genesis_hash):
        raise LedgerError(f"replica {self.path}: genesis hash {parsed['block_hash'][:16]}... is "
                          f"not the pinned {self.genesis_hash[:16]}...")
      if index == 0:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        blk.create_file(self.path, line + b"\n")
      else:
        blk.append_line(self.path, line + b"\n")
      self.lines.append(line)
      self.state = state


def first_divergence(a: Sequence[bytes], b: Sequence[bytes]) -> int | None:
  """The first index both copies hold with different blocks; None when one is a prefix of the
  other (a hospital's copy ends at the last block it received)."""
  for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
      return i
  return None
