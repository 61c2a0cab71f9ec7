r"""Verifies an identity ledger file: hash links, proofs of possession, all signatures.

  python scripts/verify_ledger.py --ledger=runs/demo/ledger.jsonl [--backend=auto]

Exit status: 0 valid; 1 invalid (prints the first bad block and why); 2 no such file.
"""

from __future__ import annotations

import sys

from absl import app, flags

from fedlora_jax.ledger import BACKEND_NAMES, LedgerError, verify_ledger

_LEDGER = flags.DEFINE_string("ledger", None, "Path of the ledger (JSON lines).", required=True)
_BACKEND = flags.DEFINE_enum("backend", "auto", list(BACKEND_NAMES), "BLS backend.")


def main(argv: list[str]) -> int:
  del argv
  try:
    result = verify_ledger(_LEDGER.value, backend=_BACKEND.value)
  except (LedgerError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if result.torn_tail:
    print(f"warning: ignored a torn trailing line after block {result.num_blocks - 1} "
          "(interrupted append)")
  if not result.ok:
    print(f"INVALID: block {result.first_bad_block}: {result.reason}")
    return 1
  print(f"OK: {result.num_blocks} blocks verified")
  return 0


if __name__ == "__main__":
  app.run(main)
