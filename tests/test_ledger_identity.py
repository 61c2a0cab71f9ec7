"""Identities: deterministic generation, ids, keystore permissions, no secrets in reprs."""

import hashlib
import os
import stat

import pytest

from fedlora_jax.ledger import Identity, KeystoreError, load_keystore


def test_generate_is_deterministic_and_id_is_sha256_of_pk() -> None:
  a = Identity.generate("hospital-a", b"seed" * 8)
  assert a.pk == Identity.generate("hospital-a", b"seed" * 8).pk
  assert a.pk != Identity.generate("hospital-b", b"seed" * 8).pk
  assert a.id == hashlib.sha256(a.pk).hexdigest()
  assert a.has_secret and not a.public().has_secret
  assert a.public() == a  # equality ignores the secret


def test_secret_never_in_repr() -> None:
  a = Identity.generate("hospital-a", b"seed" * 8)
  sk_hex = a._sk.hex()
  for text in (repr(a), str(a), repr([a]), f"{a}"):
    assert sk_hex not in text and "hospital-a" in text


def test_keystore_roundtrip_with_0600(tmp_path) -> None:
  ids = [Identity.generate(f"client{i}", b"s" * 32) for i in range(2)]
  store = tmp_path / "keys"
  paths = [i.save(store) for i in ids]
  assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
  for path in paths:
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
  loaded = load_keystore(store)
  assert sorted(loaded) == ["client0", "client1"]
  assert loaded["client1"].pk == ids[1].pk and loaded["client1"].has_secret
  with pytest.raises(KeystoreError, match="already exists"):
    ids[0].save(store)


def test_keystore_refuses_unsafe_or_missing_files(tmp_path) -> None:
  path = Identity.generate("c", b"s" * 32).save(tmp_path)
  os.chmod(path, 0o644)
  with pytest.raises(KeystoreError, match="unsafe permissions"):
    Identity.load(tmp_path, "c")
  with pytest.raises(KeystoreError, match="no key file"):
    Identity.load(tmp_path, "nobody")
  with pytest.raises(ValueError):
    Identity.generate("../escape", b"s" * 32)
  with pytest.raises(KeystoreError, match="no secret key"):
    Identity.generate("c", b"s" * 32).public().sign(b"m")
