"""Ledgers for tests: registrations with a declared size, the job's rules, members' approvals."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from fedlora_jax.ledger import Identity, Ledger, Registration, make_rules
from fedlora_jax.ledger.bls import Backend

DECLARED = 1000  # every test client's declared dataset size


def registrations(clients: Sequence[Identity | Registration], backend: Backend,
                  num_samples: int = DECLARED) -> list[Registration]:
  """Registration records (identities that hold their key register with `num_samples`)."""
  return [c if isinstance(c, Registration) else Registration.of(c, num_samples, backend)
          for c in clients]


def create_ledger(path: Path, label: str, server: Identity,
                  clients: Sequence[Identity | Registration], backend: Backend,
                  **rule_changes) -> Ledger:
  """A ledger whose rules are FedAvg by sample counts, up to 64 clients a round, no co-signing
  (tests of co-signing set `cosign="participants"`)."""
  rules = make_rules(**{"algorithm": "fedavg", "clients_per_round": 64, "cosign": "none",
                        **rule_changes})
  return Ledger.create(path, label, server, registrations(clients, backend), backend, rules=rules)


def join(ledger: Ledger, members: Sequence[Identity], newcomers: Sequence[Identity]) -> dict:
  """Registers `newcomers` with the approval of every one of `members`."""
  regs = registrations(newcomers, ledger.backend)
  message = ledger.membership_message(regs)
  return ledger.register(regs, [(m.id, m.sign(message, ledger.backend)) for m in members])
