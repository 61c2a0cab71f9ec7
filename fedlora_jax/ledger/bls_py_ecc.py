"""Reference BLS backend: `py_ecc.bls.G2ProofOfPossession` (pure Python)."""

from __future__ import annotations

from typing import Sequence

from py_ecc.bls import G2ProofOfPossession as _Pop

from fedlora_jax.ledger.bls import sk_to_int


class PyEccBackend:
  """Thin wrapper over py_ecc with the `Backend` byte-level interface."""

  name = "py_ecc"

  def sk_to_pk(self, sk: bytes) -> bytes:
    return bytes(_Pop.SkToPk(sk_to_int(sk)))

  def sign(self, sk: bytes, message: bytes) -> bytes:
    return bytes(_Pop.Sign(sk_to_int(sk), message))

  def verify(self, pk: bytes, message: bytes, signature: bytes) -> bool:
    return bool(_Pop.Verify(pk, message, signature))

  def aggregate(self, signatures: Sequence[bytes]) -> bytes:
    if not signatures:
      raise ValueError("cannot aggregate zero signatures")
    try:
      return bytes(_Pop.Aggregate(list(signatures)))
    except Exception as e:  # py_ecc raises ValidationError/ValueError/AssertionError.
      raise ValueError(f"invalid signature in aggregate: {e}") from e

  def aggregate_verify(
      self, pks: Sequence[bytes], messages: Sequence[bytes], signature: bytes
  ) -> bool:
    if not pks or len(pks) != len(messages):
      return False
    return bool(_Pop.AggregateVerify(list(pks), list(messages), signature))

  def fast_aggregate_verify(self, pks: Sequence[bytes], message: bytes, signature: bytes) -> bool:
    return bool(pks) and bool(_Pop.FastAggregateVerify(list(pks), message, signature))

  def pop_prove(self, sk: bytes) -> bytes:
    return bytes(_Pop.PopProve(sk_to_int(sk)))

  def pop_verify(self, pk: bytes, proof: bytes) -> bool:
    return bool(_Pop.PopVerify(pk, proof))
