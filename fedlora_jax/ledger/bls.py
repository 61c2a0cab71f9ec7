"""BLS signatures, ciphersuite BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_.

Public keys are 48-byte compressed G1 points, signatures and proofs of possession 96-byte compressed
G2 points, secret keys 32-byte big-endian integers in [1, r). Three backends implement the same
`Backend` protocol and produce byte-identical outputs: `py_ecc` (pure Python, the reference, slow),
`arkworks` (compiled, via `py-arkworks-bls12381`; optional) and `blspy` (blst via Chia's bindings,
the fastest; optional). All curve arithmetic comes from those libraries.
"""

from __future__ import annotations

import functools
import importlib
from typing import Protocol, Sequence, runtime_checkable

from py_ecc.bls import G2ProofOfPossession

SIG_DST = G2ProofOfPossession.DST  # b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
POP_DST = G2ProofOfPossession.POP_TAG  # b"BLS_POP_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
CURVE_ORDER = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
SK_LEN, PK_LEN, SIG_LEN = 32, 48, 96
BACKEND_NAMES = ("auto", "py_ecc", "arkworks", "blspy")
# Compiled backends, fastest first (64-client verification, scripts/benchmark.py --sections=ledger).
_MODULES = {"blspy": "blspy", "arkworks": "py_arkworks_bls12381"}


@runtime_checkable
class Backend(Protocol):
  """The IETF BLS operations the ledger needs (PoP ciphersuite). Verifiers never raise."""

  name: str

  def sk_to_pk(self, sk: bytes) -> bytes: ...

  def sign(self, sk: bytes, message: bytes) -> bytes: ...

  def verify(self, pk: bytes, message: bytes, signature: bytes) -> bool: ...

  def aggregate(self, signatures: Sequence[bytes]) -> bytes: ...

  def aggregate_verify(
      self, pks: Sequence[bytes], messages: Sequence[bytes], signature: bytes
  ) -> bool: ...

  def fast_aggregate_verify(
      self, pks: Sequence[bytes], message: bytes, signature: bytes
  ) -> bool: ...
  """Every key signed the same `message` (co-signatures, approvals): one pairing check over the
  sum of the keys, safe because every key proved possession."""

  def pop_prove(self, sk: bytes) -> bytes: ...

  def pop_verify(self, pk: bytes, proof: bytes) -> bool: ...


def sk_to_int(sk: bytes) -> int:
  """Decodes and range-checks a 32-byte big-endian secret key."""
  if not isinstance(sk, bytes) or len(sk) != SK_LEN:
    raise ValueError(f"secret key must be {SK_LEN} bytes")
  value = int.from_bytes(sk, "big")
  if not 0 < value < CURVE_ORDER:
    raise ValueError("secret key out of range [1, r)")
  return value


def key_gen(ikm: bytes, key_info: bytes = b"") -> bytes:
  """IETF KeyGen (HKDF-SHA256, hashing only) from >= 32 bytes of keying material."""
  if len(ikm) < 32:
    raise ValueError("KeyGen needs at least 32 bytes of input keying material")
  return G2ProofOfPossession.KeyGen(ikm, key_info).to_bytes(SK_LEN, "big")


def backend_available(name: str) -> bool:
  """Whether backend `name`'s library can be imported (py_ecc always can)."""
  if name == "py_ecc":
    return True
  if name not in _MODULES:
    raise ValueError(f"unknown BLS backend {name!r}; expected one of {BACKEND_NAMES}")
  try:
    importlib.import_module(_MODULES[name])
  except ImportError:
    return False
  return True


@functools.cache
def get_backend(name: str = "auto") -> Backend:
  """Returns a backend: 'py_ecc', 'arkworks', 'blspy', or 'auto' (the fastest installed)."""
  if name == "auto":
    name = next((n for n in _MODULES if backend_available(n)), "py_ecc")
  if name == "py_ecc":
    from fedlora_jax.ledger.bls_py_ecc import PyEccBackend

    return PyEccBackend()
  if name == "arkworks":
    from fedlora_jax.ledger.bls_arkworks import ArkworksBackend

    return ArkworksBackend()
  if name == "blspy":
    from fedlora_jax.ledger.bls_blspy import BlspyBackend

    return BlspyBackend()
  raise ValueError(f"unknown BLS backend {name!r}; expected one of {BACKEND_NAMES}")


def resolve_backend(backend: Backend | str | None) -> Backend:
  """Accepts a backend, a backend name, or None (meaning 'auto')."""
  if backend is None:
    return get_backend("auto")
  if isinstance(backend, str):
    return get_backend(backend)
  return backend
