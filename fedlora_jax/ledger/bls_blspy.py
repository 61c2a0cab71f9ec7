"""Compiled BLS backend over `blspy` (Chia's bindings of blst): `PopSchemeMPL`, the same IETF
ciphersuite (BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_), byte-identical to py_ecc.

Decoding (`from_bytes`) checks canonical encodings and subgroup membership; the identity public
key is refused here (KeyValidate), as py_ecc and the arkworks backend do.
"""

from __future__ import annotations

import functools
from typing import Sequence

from blspy import G1Element, G2Element, PopSchemeMPL, PrivateKey

from fedlora_jax.ledger.bls import PK_LEN, SIG_LEN, sk_to_int

_IDENTITY_PK = bytes(G1Element())


@functools.lru_cache(maxsize=4096)
def _decode_pk(pk: bytes) -> G1Element:
  """KeyValidate + decode; raises ValueError. Cached: registered keys are decoded once."""
  if not isinstance(pk, bytes) or len(pk) != PK_LEN or pk == _IDENTITY_PK:
    raise ValueError("invalid public key")
  try:
    return G1Element.from_bytes(pk)
  except RuntimeError as e:  # blspy raises RuntimeError/ValueError on bad points
    raise ValueError(f"invalid public key: {e}") from e


def _decode_sig(sig: bytes) -> G2Element:
  if not isinstance(sig, bytes) or len(sig) != SIG_LEN:
    raise ValueError("signature must be 96 bytes")
  try:
    return G2Element.from_bytes(sig)
  except RuntimeError as e:
    raise ValueError(f"invalid signature: {e}") from e


def _decode_all(pks: Sequence[bytes], sig: bytes) -> tuple[list[G1Element], G2Element] | None:
  """The decoded keys and signature, or None when there is no key or one does not decode."""
  if not pks:
    return None
  try:
    return [_decode_pk(pk) for pk in pks], _decode_sig(sig)
  except (ValueError, TypeError):
    return None


def _sk(sk: bytes) -> PrivateKey:
  sk_to_int(sk)  # range check: blspy accepts the zero key
  return PrivateKey.from_bytes(sk)


class BlspyBackend:
  """`Backend` implementation over blspy / blst (C++ and assembly)."""

  name = "blspy"

  def sk_to_pk(self, sk: bytes) -> bytes:
    return bytes(_sk(sk).get_g1())

  def sign(self, sk: bytes, message: bytes) -> bytes:
    return bytes(PopSchemeMPL.sign(_sk(sk), message))

  def verify(self, pk: bytes, message: bytes, signature: bytes) -> bool:
    return self.aggregate_verify([pk], [message], signature)

  def aggregate(self, signatures: Sequence[bytes]) -> bytes:
    if not signatures:
      raise ValueError("cannot aggregate zero signatures")
    return bytes(PopSchemeMPL.aggregate([_decode_sig(s) for s in signatures]))

  def aggregate_verify(
      self, pks: Sequence[bytes], messages: Sequence[bytes], signature: bytes
  ) -> bool:
    decoded = _decode_all(pks, signature) if len(pks) == len(messages) else None
    if decoded is None:
      return False
    g1s, sig = decoded
    return bool(PopSchemeMPL.aggregate_verify(g1s, list(messages), sig))

  def fast_aggregate_verify(self, pks: Sequence[bytes], message: bytes, signature: bytes) -> bool:
    decoded = _decode_all(pks, signature)
    if decoded is None:
      return False
    g1s, sig = decoded
    return bool(PopSchemeMPL.fast_aggregate_verify(g1s, message, sig))

  def pop_prove(self, sk: bytes) -> bytes:
    return bytes(PopSchemeMPL.pop_prove(_sk(sk)))

  def pop_verify(self, pk: bytes, proof: bytes) -> bool:
    try:
      return bool(PopSchemeMPL.pop_verify(_decode_pk(pk), _decode_sig(proof)))
    except (ValueError, TypeError):
      return False
