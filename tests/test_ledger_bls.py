"""BLS backends: known answers, byte-for-byte agreement, cross-verification, rejections."""

import hashlib

import pytest

from fedlora_jax.ledger import backend_available, get_backend, key_gen
from fedlora_jax.ledger.bls import Backend


def _installed(name: str):
  return pytest.param(name, marks=pytest.mark.skipif(not backend_available(name),
                                                     reason=f"{name} not installed"))


BACKENDS = ["py_ecc", _installed("arkworks"), _installed("blspy")]
FAST = [_installed("arkworks"), _installed("blspy")]

# Ethereum consensus-spec BLS vector (sign case): secret key, message = 32 zero bytes.
KAT_SK = bytes.fromhex("263dbd792f5b1be47ed85f8938c0f29586af0d3ac7b977f21c278fe1462040e3")
KAT_PK = bytes.fromhex("a491d1b0ecd9bb917989f0e74f0dea0422eac4a873e5e2644f368dffb9a6e20fd6e10c1b"
                       "77654d067c0618f6e5a7f79a")
KAT_SIG = bytes.fromhex(
    "b6ed936746e01f8ecf281f020953fbf1f01debd5657c4a383940b020b26507f6076334f91e2366c96e9ab279fb"
    "5158090352ea1c5b0c9274504f4f0e7053af24802e51e4568d164fe986834f41e55c8e850ce1f98458c0cfc9ab"
    "380b55285a55")


def _sk(i: int) -> bytes:
  return key_gen(hashlib.sha256(b"bls-test/%d" % i).digest())


@pytest.mark.parametrize("name", BACKENDS)
def test_known_answer(name: str) -> None:
  backend = get_backend(name)
  assert backend.name == name and isinstance(backend, Backend)
  assert backend.sk_to_pk(KAT_SK) == KAT_PK
  assert backend.sign(KAT_SK, bytes(32)) == KAT_SIG
  assert backend.verify(KAT_PK, bytes(32), KAT_SIG)
  assert not backend.verify(KAT_PK, bytes(31), KAT_SIG)


@pytest.mark.parametrize("name", FAST)
def test_backends_agree_byte_for_byte_and_cross_verify(name: str) -> None:
  ref, fast = get_backend("py_ecc"), get_backend(name)
  sks = [_sk(0), _sk(1), _sk(2)]
  msgs = [b"attestation a", b"attestation b", b"attestation a"]  # PoP scheme: repeats allowed
  pks = [fast.sk_to_pk(sk) for sk in sks]
  assert pks == [ref.sk_to_pk(sk) for sk in sks]
  fast_sigs = [fast.sign(sk, m) for sk, m in zip(sks, msgs)]
  ref_sigs = [ref.sign(sk, m) for sk, m in zip(sks, msgs)]
  assert fast_sigs == ref_sigs
  assert [fast.pop_prove(sk) for sk in sks] == [ref.pop_prove(sk) for sk in sks]
  agg = fast.aggregate(fast_sigs)
  assert agg == ref.aggregate(ref_sigs)
  # Each verifies what the other produced (the outputs are equal, so this also covers "vice versa").
  assert ref.verify(pks[0], msgs[0], fast_sigs[0])
  assert fast.verify(pks[1], msgs[1], ref_sigs[1])
  assert ref.aggregate_verify(pks, msgs, agg) and fast.aggregate_verify(pks, msgs, agg)
  assert ref.pop_verify(pks[0], fast.pop_prove(sks[0]))
  assert fast.pop_verify(pks[0], ref.pop_prove(sks[0]))
  # Domain separation: a PoP is not a signature on the public key and vice versa.
  assert not fast.verify(pks[0], pks[0], fast.pop_prove(sks[0]))
  assert not fast.pop_verify(pks[0], fast.sign(sks[0], pks[0]))
  assert not fast.pop_verify(pks[1], fast.pop_prove(sks[0]))


def test_all_installed_backends_agree_with_each_other() -> None:
  names = [n for n in ("py_ecc", "arkworks", "blspy") if backend_available(n)]
  sk, msg = _sk(5), b"one message"
  outputs = {n: (get_backend(n).sk_to_pk(sk), get_backend(n).sign(sk, msg),
                 get_backend(n).pop_prove(sk)) for n in names}
  assert len(set(outputs.values())) == 1, names
  pk, sig, pop = outputs["py_ecc"]
  assert all(get_backend(n).verify(pk, msg, sig) and get_backend(n).pop_verify(pk, pop)
             for n in names)


@pytest.mark.parametrize("name", FAST)
def test_fast_backend_rejects_what_py_ecc_rejects(name: str) -> None:
  """Same verdicts on malformed inputs (py_ecc only for the cheap decoding failures)."""
  fast, ref = get_backend(name), get_backend("py_ecc")
  sk = _sk(2)
  pk, sig = fast.sk_to_pk(sk), fast.sign(sk, b"m")
  identity_pk = bytes([0xC0]) + bytes(47)
  identity_sig = bytes([0xC0]) + bytes(95)
  cases = [
      (identity_pk, b"m", identity_sig),  # infinity key: KeyValidate fails
      (pk[:-1], b"m", sig),  # short key
      (pk, b"m", sig[:-1]),  # short signature
      (bytes(48), b"m", sig),  # invalid flags
      (pk, b"m", bytes([sig[0] ^ 0x20]) + sig[1:]),  # flipped sign bit
  ]
  for case in cases:
    assert fast.verify(*case) is False
    assert ref.verify(*case) is False
  assert fast.pop_verify(identity_pk, identity_sig) is False
  assert fast.aggregate_verify([], [], sig) is False
  assert fast.aggregate_verify([pk], [b"m", b"n"], sig) is False
  with pytest.raises(ValueError):
    fast.aggregate([])
  with pytest.raises(ValueError):
    fast.sign(bytes(32), b"m")  # zero secret key


@pytest.mark.parametrize("name", BACKENDS)
def test_aggregate_verify_detects_swapped_messages(name: str) -> None:
  backend = get_backend(name)
  sks = [_sk(3), _sk(4)]
  pks = [backend.sk_to_pk(sk) for sk in sks]
  agg = backend.aggregate([backend.sign(sks[0], b"x"), backend.sign(sks[1], b"y")])
  assert backend.aggregate_verify(pks, [b"x", b"y"], agg)
  assert not backend.aggregate_verify(pks, [b"y", b"x"], agg)


def test_key_gen_and_backend_selection() -> None:
  assert key_gen(b"k" * 32) == key_gen(b"k" * 32) != key_gen(b"k" * 32, b"info")
  assert len(key_gen(b"k" * 32)) == 32
  with pytest.raises(ValueError):
    key_gen(b"short")
  # auto: the fastest installed (blspy, then arkworks; scripts/benchmark.py --sections=ledger).
  expected = next((n for n in ("blspy", "arkworks") if backend_available(n)), "py_ecc")
  assert get_backend("auto").name == expected
  with pytest.raises(ValueError, match="unknown BLS backend"):
    get_backend("blst")
