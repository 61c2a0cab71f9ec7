"""Ledger exceptions: every failure names the block or client and the reason."""

from __future__ import annotations


class LedgerError(ValueError):
  """Base class of all ledger failures."""


class BlockError(LedgerError):
  """A block of a ledger file fails verification.

  Attributes:
    index: 0-based index of the first bad block (the line number in the file).
    reason: why it fails.
  """

  def __init__(self, index: int, reason: str) -> None:
    super().__init__(f"block {index}: {reason}")
    self.index = index
    self.reason = reason


class RegistrationError(LedgerError):
  """A client's registration is refused (bad proof of possession, duplicate key or name)."""

  def __init__(self, name: str, reason: str) -> None:
    super().__init__(f"registration of {name!r} refused: {reason}")
    self.name = name
    self.reason = reason


class KeystoreError(LedgerError):
  """A key file is missing, malformed or has unsafe permissions."""
