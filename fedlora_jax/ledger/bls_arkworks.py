"""Compiled BLS backend over `py-arkworks-bls12381` (hash-to-curve, group ops, pairings).

Implements the IETF PoP ciphersuite from the library's primitives, byte-identical to py_ecc:
Sign = H(m)·sk, Verify/AggregateVerify = one multi-pairing check
e(-g1, σ) · Π e(pk_i, H(m_i)) == 1, PopProve = Sign with the POP DST over the public key.
Decoding enforces canonical encodings, subgroup membership, and non-identity public keys
(KeyValidate).
"""

from __future__ import annotations

import functools
from typing import Sequence

from py_arkworks_bls12381 import GT, G1Point, G2Point, Scalar

from fedlora_jax.ledger.bls import PK_LEN, POP_DST, SIG_DST, SIG_LEN, sk_to_int

_NEG_G1 = -G1Point()


@functools.lru_cache(maxsize=4096)
def _decode_pk(pk: bytes) -> G1Point:
  """KeyValidate + decode; raises ValueError. Cached: registered keys are decoded once."""
  if not isinstance(pk, bytes) or len(pk) != PK_LEN:
    raise ValueError("public key must be 48 bytes")
  point = G1Point.from_compressed_bytes(pk)
  if point == G1Point.identity() or not point.is_in_subgroup():
    raise ValueError("invalid public key")
  if point.to_compressed_bytes() != pk:
    raise ValueError("non-canonical public key encoding")
  return point


def _decode_sig(sig: bytes) -> G2Point:
  """Decodes a signature, checking subgroup membership and canonical encoding."""
  if not isinstance(sig, bytes) or len(sig) != SIG_LEN:
    raise ValueError("signature must be 96 bytes")
  point = G2Point.from_compressed_bytes(sig)
  if not point.is_in_subgroup():
    raise ValueError("signature not in the G2 subgroup")
  if point.to_compressed_bytes() != sig:
    raise ValueError("non-canonical signature encoding")
  return point


def _core_sign(sk: bytes, message: bytes, dst: bytes) -> bytes:
  return (G2Point.hash_to_curve(message, dst) * Scalar(sk_to_int(sk))).to_compressed_bytes()


def _core_aggregate_verify(
    pks: Sequence[bytes], messages: Sequence[bytes], signature: bytes, dst: bytes
) -> bool:
  if not pks or len(pks) != len(messages):
    return False
  try:
    g1s = [_NEG_G1] + [_decode_pk(pk) for pk in pks]
    g2s = [_decode_sig(signature)] + [G2Point.hash_to_curve(m, dst) for m in messages]
  except (ValueError, TypeError):
    return False
  return bool(GT.pairing_check(g1s, g2s))


class ArkworksBackend:
  """`Backend` implementation over arkworks (Rust)."""

  name = "arkworks"

  def sk_to_pk(self, sk: bytes) -> bytes:
    return (G1Point() * Scalar(sk_to_int(sk))).to_compressed_bytes()

  def sign(self, sk: bytes, message: bytes) -> bytes:
    return _core_sign(sk, message, SIG_DST)

  def verify(self, pk: bytes, message: bytes, signature: bytes) -> bool:
    return _core_aggregate_verify([pk], [message], signature, SIG_DST)

  def aggregate(self, signatures: Sequence[bytes]) -> bytes:
    if not signatures:
      raise ValueError("cannot aggregate zero signatures")
    total = G2Point.identity()
    for sig in signatures:
      if not isinstance(sig, bytes) or len(sig) != SIG_LEN:
        raise ValueError("signature must be 96 bytes")
      total = total + G2Point.from_compressed_bytes(sig)
    return total.to_compressed_bytes()

  def aggregate_verify(
      self, pks: Sequence[bytes], messages: Sequence[bytes], signature: bytes
  ) -> bool:
    return _core_aggregate_verify(pks, messages, signature, SIG_DST)

  def fast_aggregate_verify(self, pks: Sequence[bytes], message: bytes, signature: bytes) -> bool:
    if not pks:
      return False
    try:
      total = G1Point.identity()
      for pk in pks:
        total = total + _decode_pk(pk)
      sig = _decode_sig(signature)
    except (ValueError, TypeError):
      return False
    return bool(GT.pairing_check([_NEG_G1, total], [sig, G2Point.hash_to_curve(message, SIG_DST)]))

  def pop_prove(self, sk: bytes) -> bytes:
    return _core_sign(sk, self.sk_to_pk(sk), POP_DST)

  def pop_verify(self, pk: bytes, proof: bytes) -> bool:
    return _core_aggregate_verify([pk], [pk], proof, POP_DST)
