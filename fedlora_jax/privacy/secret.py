"""Secret DP randomness, owned by the party that adds the noise.

Every random draw that a DP guarantee rests on -- DP-SGD's noise and Poisson batches at a
hospital, DP-FedAvg's noise at the server -- comes from that party's `DpSecret`: 32 bytes from the
operating system (`os.urandom`), created once in the party's private directory (0700, file 0600,
like its BLS keystore) and read again on resume, so an interrupted run continues with the same
noise. Nothing in a config, metrics, checkpoint, ledger or report derives from it.

Per-use keys are HMAC-SHA256(secret, purpose, round, ...): a JAX threefry key (2 x uint32) for
noise, a 128-bit Philox key for numpy sampling. Knowing any number of them reveals nothing about the
secret or the others.

`DpSecret.reproducible(seed, party)` derives the secret from the config seed instead: for research
runs that must replay bit for bit (`privacy.reproducible_noise=True`). It gives no privacy
guarantee, and every artifact of such a run says so (`NO_GUARANTEE`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import numpy as np

SECRET_FILE = "dp_secret"
SECRET_BYTES = 32
NO_GUARANTEE = "no privacy guarantee: noise derived from the config seed"


class SecretError(ValueError):
  """A private DP secret that cannot be used (unreadable, wrong size, readable by others)."""


class DpSecret:
  """One party's DP secret. Never printed, pickled into artifacts, or compared by value."""

  __slots__ = ("_secret", "reproducible_from_seed")

  def __init__(self, secret: bytes, *, reproducible_from_seed: bool = False):
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
      raise SecretError(f"a DP secret is {SECRET_BYTES} bytes")
    self._secret = secret
    self.reproducible_from_seed = reproducible_from_seed

  def __repr__(self) -> str:
    return "DpSecret(<seeded: no privacy>)" if self.reproducible_from_seed else "DpSecret(<held>)"

  def __reduce__(self):
    raise TypeError("a DpSecret is never serialised")

  @classmethod
  def load_or_create(cls, directory: str | os.PathLike[str]) -> DpSecret:
    """The secret in `directory/dp_secret`, created from os.urandom when absent."""
    d = Path(directory)
    if not (d / SECRET_FILE).exists():
      d.mkdir(parents=True, exist_ok=True, mode=0o700)
      os.chmod(d, 0o700)
      tmp = d / f"{SECRET_FILE}.{os.urandom(8).hex()}.tmp"
      fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
      with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(SECRET_BYTES).hex().encode())
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, d / SECRET_FILE)
    return cls.load(d)

  @classmethod
  def load(cls, directory: str | os.PathLike[str]) -> DpSecret:
    """The existing secret in `directory/dp_secret` (a resume needs the one it started with)."""
    path = Path(directory) / SECRET_FILE
    if not path.is_file() or path.is_symlink():
      raise SecretError(f"{path} is missing: a resumed DP run needs the secret it started with "
                        "(restore it, or start a new --config.workdir)")
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077 or st.st_uid != os.getuid():
      raise SecretError(f"{path} is readable by others or not ours (mode "
                        f"{stat.S_IMODE(st.st_mode):o}, uid {st.st_uid}); chmod 600 it")
    try:
      secret = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as e:
      raise SecretError(f"{path} is not a DP secret: {e}") from e
    if len(secret) != SECRET_BYTES:
      raise SecretError(f"{path} holds {len(secret)} bytes, not {SECRET_BYTES}")
    return cls(secret)

  @classmethod
  def reproducible(cls, seed: int, party: str) -> DpSecret:
    """Research only: a secret anyone can recompute from the config seed (no privacy)."""
    digest = hashlib.sha256(f"fedlora-jax seeded DP noise/{int(seed)}/{party}".encode()).digest()
    return cls(digest, reproducible_from_seed=True)

  def _derive(self, purpose: str, *tags: int) -> bytes:
    msg = purpose.encode() + b"".join(int(t).to_bytes(8, "big", signed=True) for t in tags)
    return hmac.new(self._secret, msg, hashlib.sha256).digest()

  def jax_key(self, purpose: str, *tags: int) -> np.ndarray:
    """A raw threefry key, uint32 [2], for `purpose` and `tags` (e.g. round, step)."""
    return np.frombuffer(self._derive(purpose, *tags)[:8], ">u4").astype(np.uint32)

  def numpy_rng(self, purpose: str, *tags: int) -> np.random.Generator:
    """A Philox generator keyed with 128 secret bits for `purpose` and `tags`."""
    key = int.from_bytes(self._derive(purpose, *tags)[:16], "big")
    return np.random.Generator(np.random.Philox(key=key))
