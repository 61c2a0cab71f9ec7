"""tree_digest: a pure function of paths, dtypes, shapes and bytes; adapter file digest."""

import hashlib
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from fedlora_jax.ledger import adapter_file_digest, tree_digest


def _tree() -> dict:
  return {
      "layers": {"0": {"lora_a": np.arange(6, dtype=np.float32).reshape(2, 3),
                       "lora_b": np.zeros((3, 2), np.float32)}},
      "step": np.int32(7),
  }


def test_matches_hand_computed_encoding() -> None:
  a = np.array([1.5, -2.0], np.float32)
  u64 = lambda n: struct.pack(">Q", n)  # noqa: E731
  expected = hashlib.sha256(
      b"fedlora-jax/tree-digest/v1\x00" + u64(1)
      + u64(3) + b"x/w" + u64(7) + b"float32" + u64(1) + u64(2) + u64(8) + a.tobytes()
  ).digest()
  assert tree_digest({"x": {"w": a}}) == expected
  assert len(expected) == 32


def test_pure_function_of_content() -> None:
  tree = _tree()
  reordered = {"step": np.int32(7), "layers": {"0": dict(reversed(tree["layers"]["0"].items()))}}
  as_jax = {"layers": {"0": {k: jnp.asarray(v) for k, v in tree["layers"]["0"].items()}},
            "step": jnp.int32(7)}
  fortran = {**tree, "layers": {"0": {**tree["layers"]["0"],
                                      "lora_a": np.asfortranarray(tree["layers"]["0"]["lora_a"])}}}
  big_endian = {**tree, "step": np.array(7, ">i4")}
  digest = tree_digest(tree)
  assert digest == tree_digest(reordered) == tree_digest(as_jax) == tree_digest(fortran)
  assert digest == tree_digest(big_endian)


@pytest.mark.parametrize("change", ["element", "dtype", "shape", "path", "extra_leaf"])
def test_changes_with_any_difference(change: str) -> None:
  tree = _tree()
  a = tree["layers"]["0"]["lora_a"]
  if change == "element":
    b = a.copy()
    b[1, 2] = np.nextafter(b[1, 2], np.float32(100))
    tree["layers"]["0"]["lora_a"] = b
  elif change == "dtype":
    tree["step"] = np.uint32(7)  # same bytes, different dtype
  elif change == "shape":
    tree["layers"]["0"]["lora_a"] = a.reshape(3, 2)  # same bytes, different shape
  elif change == "path":
    tree["layers"]["1"] = tree["layers"].pop("0")
  else:
    tree["bias"] = np.zeros((0,), np.float32)
  assert tree_digest(tree) != tree_digest(_tree())


def test_rejects_ambiguous_keys() -> None:
  with pytest.raises(ValueError):
    tree_digest({"a/b": np.zeros(1)})
  with pytest.raises(TypeError):
    tree_digest({"a": np.array([object()])})


def test_adapter_file_digest(tmp_path) -> None:
  tensors = {"base_model.model.layers.0.self_attn.q_proj.lora_A.weight":
                 np.arange(8, dtype=np.float32).reshape(2, 4),
             "base_model.model.layers.0.self_attn.q_proj.lora_B.weight":
                 np.ones((4, 2), np.float32)}
  path = tmp_path / "adapter_model.safetensors"
  save_file(tensors, str(path))
  assert adapter_file_digest(path) == tree_digest(tensors)
