"""Canonical SHA-256 digest of a pytree of arrays (what clients and the server attest).

Encoding (version 1), fed to SHA-256 in this order:
  b"fedlora-jax/tree-digest/v1\\0", u64 number of leaves, then per leaf in sorted path order:
  len-prefixed UTF-8 path ('/'-joined keys), len-prefixed dtype name, u64 ndim, u64 per dim,
  u64 byte count, the C-order little-endian bytes.
Integers are big-endian u64; len-prefixes are u64. The tree is nested mappings with string keys
(containing no '/'); every other value is a leaf converted with `np.asarray`, so numpy and jax
arrays with equal content give equal digests. JAX itself is not imported.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any, Iterator, Mapping

import numpy as np

_TAG = b"fedlora-jax/tree-digest/v1\x00"
DIGEST_LEN = 32


def _u64(n: int) -> bytes:
  return struct.pack(">Q", n)


def _lp(data: bytes) -> bytes:
  return _u64(len(data)) + data


def _leaves(tree: Any, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
  if isinstance(tree, Mapping):
    for key, value in tree.items():
      if not isinstance(key, str) or not key or "/" in key:
        raise ValueError(f"tree keys must be non-empty strings without '/': {prefix + (key,)!r}")
      yield from _leaves(value, prefix + (key,))
  else:
    yield prefix, tree


def _canonical_array(leaf: Any, path: str) -> np.ndarray:
  array = np.asarray(leaf)
  if array.dtype.hasobject or array.dtype.fields is not None:
    raise TypeError(f"leaf {path!r} has unsupported dtype {array.dtype}")
  if array.dtype.byteorder == ">":
    array = array.astype(array.dtype.newbyteorder("<"))
  return np.ascontiguousarray(array)


def tree_digest(tree: Any) -> bytes:
  """32-byte SHA-256 over the canonical encoding of every array in `tree` (see module doc)."""
  leaves = sorted(
      (("/".join(path), leaf) for path, leaf in _leaves(tree, ())), key=lambda item: item[0]
  )
  h = hashlib.sha256(_TAG)
  h.update(_u64(len(leaves)))
  for path, leaf in leaves:
    array = _canonical_array(leaf, path)
    h.update(_lp(path.encode("utf-8")))
    h.update(_lp(array.dtype.name.encode("ascii")))
    h.update(_u64(array.ndim) + b"".join(_u64(d) for d in array.shape))
    h.update(_u64(array.nbytes))
    h.update(array.reshape(-1).view(np.uint8).data)
  return h.digest()


def base_residual(adapted: Mapping[str, Any], original: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{name: adapted - original} of flat {HF tensor name: array} dicts, for every tensor that
  changed (FedEx-LoRA's residuals folded into the base); both dicts must hold the same tensors
  with the same shapes and dtypes. The difference is taken in that dtype."""
  if set(adapted) != set(original):
    raise ValueError(f"tensor names differ: {sorted(set(adapted) ^ set(original))[:4]}")
  out = {}
  for name in sorted(adapted):
    new, old = np.asarray(adapted[name]), np.asarray(original[name])
    if new.shape != old.shape or new.dtype != old.dtype:
      raise ValueError(f"tensor {name}: {new.dtype}{list(new.shape)} vs "
                       f"{old.dtype}{list(old.shape)}")
    if not np.array_equal(new, old):
      out[name] = new - old
  return out


def residual_digest(adapted: Mapping[str, Any], original: Mapping[str, Any]) -> bytes:
  """`tree_digest` of `base_residual`: what a FedEx-LoRA block attests as `residual_digest`."""
  return tree_digest(base_residual(adapted, original))


def adapter_file_digest(path: str | os.PathLike[str]) -> bytes:
  """Digest of a (PEFT) adapter safetensors file: `tree_digest` of its flat {name: array} dict."""
  from safetensors.numpy import load_file

  return tree_digest(load_file(os.fspath(path)))
