"""The operator's registry: the registration records hospitals sent out of band.

Format: JSON lines, one record per line, as `scripts/enroll.py` prints it:
  {"name": "cardiology", "id": "<sha256(pk) hex>", "pk": "<48-byte hex>", "pop": "<96-byte hex>"}
(`id` optional). Blank lines are ignored. Loading refuses a malformed line, a proof of possession
that fails, and a repeated name or key, naming the line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedlora_jax.ledger.attestation import Registration
from fedlora_jax.ledger.block import canonical_json
from fedlora_jax.ledger.bls import Backend, resolve_backend
from fedlora_jax.ledger.chain import registration_problem
from fedlora_jax.ledger.errors import LedgerError, RegistrationError


def registry_line(reg: Registration) -> str:
  """One registry record (canonical JSON, no newline)."""
  return canonical_json(reg.to_dict())


def load_registry(path: str | os.PathLike[str],
                  backend: Backend | str | None = None) -> list[Registration]:
  """Every registration of a registry file, checked (PoP, unique names and keys), in file order.

  Raises LedgerError for a missing file or malformed line, RegistrationError for a refused record.
  """
  path = Path(path)
  if not path.is_file():
    raise LedgerError(f"no registry file at {path}")
  backend = resolve_backend(backend)
  regs: list[Registration] = []
  for number, text in enumerate(path.read_text().splitlines(), 1):
    if not text.strip():
      continue
    try:
      reg = Registration.from_dict(json.loads(text))
    except (ValueError, LedgerError) as e:
      raise LedgerError(f"{path}:{number}: {e}") from e
    problem = registration_problem(reg, {r.id for r in regs}, {r.name for r in regs}, backend)
    if problem is not None:
      raise RegistrationError(reg.name, f"{problem} ({path}:{number})")
    regs.append(reg)
  return regs
