"""Identities: a name and a BLS key pair; the id is the SHA-256 of the public key.

Secret keys live only in memory and in a keystore directory (mode 0700) as `<name>.key` files
created with mode 0600; they never appear in reprs, the ledger, or logs. A key file holds the
secret key as hex; the public key is re-derived on load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

from fedlora_jax.ledger.bls import Backend, key_gen, resolve_backend, sk_to_int
from fedlora_jax.ledger.errors import KeystoreError

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_KEY_SUFFIX = ".key"


def identity_id(pk: bytes) -> str:
  """Identity id: hex SHA-256 of the 48-byte compressed public key."""
  return hashlib.sha256(pk).hexdigest()


def check_name(name: str) -> str:
  """Names are short, filename-safe identifiers (they name key files)."""
  if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
    raise ValueError(f"invalid identity name {name!r}: use [A-Za-z0-9_.-], "
                     "not starting with '.' or '-'")
  return name


@dataclasses.dataclass(frozen=True, repr=False)
class Identity:
  """A named BLS identity; holds the secret key only when it is ours (`has_secret`)."""

  name: str
  pk: bytes
  _sk: bytes | None = dataclasses.field(default=None, repr=False, compare=False)

  def __post_init__(self) -> None:
    check_name(self.name)
    if not isinstance(self.pk, bytes) or len(self.pk) != 48:
      raise ValueError(f"identity {self.name!r}: public key must be 48 bytes")

  def __repr__(self) -> str:
    secret = ", secret=<held>" if self._sk is not None else ""
    return f"Identity(name={self.name!r}, id={self.id[:16]}...{secret})"

  @property
  def id(self) -> str:
    return identity_id(self.pk)

  @property
  def has_secret(self) -> bool:
    return self._sk is not None

  @classmethod
  def from_secret(cls, name: str, sk: bytes, backend: Backend | str | None = None) -> Identity:
    sk_to_int(sk)
    return cls(name, resolve_backend(backend).sk_to_pk(sk), sk)

  @classmethod
  def generate(
      cls, name: str, seed: bytes | None = None, backend: Backend | str | None = None
  ) -> Identity:
    """New key pair from the operating system's randomness (`secrets`). A `seed` (>= 32 bytes)
    makes it deterministic: for tests and benchmarks only, never for a run's parties.

    The name is the KeyGen key_info, so one seed gives every client a distinct key.
    """
    ikm = secrets.token_bytes(32) if seed is None else seed
    return cls.from_secret(name, key_gen(ikm, check_name(name).encode()), backend)

  def public(self) -> Identity:
    """The same identity without its secret key."""
    return Identity(self.name, self.pk)

  def _secret(self) -> bytes:
    if self._sk is None:
      raise KeystoreError(f"identity {self.name!r} has no secret key")
    return self._sk

  def sign(self, message: bytes, backend: Backend | str | None = None) -> bytes:
    return resolve_backend(backend).sign(self._secret(), message)

  def pop_prove(self, backend: Backend | str | None = None) -> bytes:
    return resolve_backend(backend).pop_prove(self._secret())

  def save(self, keystore: str | os.PathLike[str]) -> Path:
    """Writes `<keystore>/<name>.key` with mode 0600 (refuses to overwrite)."""
    directory = Path(keystore)
    if not directory.is_dir():
      directory.mkdir(mode=0o700, parents=True)
      directory.chmod(0o700)  # mkdir's mode is masked by the umask
    path = directory / (self.name + _KEY_SUFFIX)
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
      raise KeystoreError(f"key file {path} already exists") from e
    with os.fdopen(fd, "w") as f:
      f.write(self._secret().hex() + "\n")
      f.flush()
      os.fsync(f.fileno())
    return path

  @classmethod
  def load(
      cls, keystore: str | os.PathLike[str], name: str, backend: Backend | str | None = None
  ) -> Identity:
    """Reads `<keystore>/<name>.key`; refuses files readable or writable by group/others."""
    path = Path(keystore) / (check_name(name) + _KEY_SUFFIX)
    try:
      mode = path.stat().st_mode
      text = path.read_text().strip()
    except FileNotFoundError as e:
      raise KeystoreError(f"no key file {path}") from e
    if stat.S_IMODE(mode) & 0o077:
      raise KeystoreError(f"key file {path} has unsafe permissions {stat.S_IMODE(mode):o}")
    try:
      sk = bytes.fromhex(text)
      return cls.from_secret(name, sk, backend)
    except ValueError as e:
      raise KeystoreError(f"key file {path} is malformed") from e


def load_keystore(
    keystore: str | os.PathLike[str], backend: Backend | str | None = None
) -> dict[str, Identity]:
  """All identities of a keystore directory, by name."""
  names = sorted(p.name[: -len(_KEY_SUFFIX)] for p in Path(keystore).glob("*" + _KEY_SUFFIX))
  return {name: Identity.load(keystore, name, backend) for name in names}
