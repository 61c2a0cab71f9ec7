"""Arrays that travel between the server and the nodes, as flat {name: numpy array} dicts.

A LoRA adapter travels under its PEFT tensor names (`models.peft_tensors`, the encoding the
ledger digests); any other state tree (server optimizer state, SCAFFOLD's control variates)
under the `jax.tree_util.keystr` of each leaf's path; base weights the server changed
(FedEx-LoRA's folded residuals) under their dotted parameter path, whole. Decoding takes a `like`
tree of the expected structure and refuses missing, extra or misshapen arrays by name.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from fedlora_jax.ledger import tree_digest
from fedlora_jax.models import peft_tensors
from fedlora_jax.models.hf_io import PEFT_PREFIX, hf_name
from fedlora_jax.models.layer_stack import is_stacked, stack_layers, unstack_layers

PyTree = Any


class MessageError(ValueError):
  """A message whose arrays or fields do not match what this run expects."""


def lora_arrays(lora: PyTree) -> dict[str, np.ndarray]:
  """{PEFT name: float32 [r, in] or [out, r]} of one adapter (no client axis; per layer)."""
  return peft_tensors(jax.device_get(lora))


def lora_from_arrays(arrays: Mapping[str, np.ndarray], like: PyTree) -> PyTree:
  """The adapter with the structure and dtypes of `like` (stacked layers or not) from its
  PEFT-named arrays."""
  flat_like = traverse_util.flatten_dict(unstack_layers(like))
  names = {f"{PEFT_PREFIX}{hf_name(p)}.weight": p for p in flat_like}
  lora = traverse_util.unflatten_dict(_take(arrays, names, flat_like, "adapter"))
  return stack_layers(lora) if is_stacked(like) else lora


def tree_arrays(tree: PyTree) -> dict[str, np.ndarray]:
  """{keystr(path): array} of every leaf of `tree`."""
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


def tree_from_arrays(arrays: Mapping[str, np.ndarray], like: PyTree, what: str) -> PyTree:
  """A tree shaped like `like` from `tree_arrays` output."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  names = {jax.tree_util.keystr(p): i for i, (p, _) in enumerate(leaves)}
  flat_like = {i: x for i, (_, x) in enumerate(leaves)}
  got = _take(arrays, names, flat_like, what)
  return jax.tree_util.tree_unflatten(treedef, [got[i] for i in range(len(leaves))])


def submission_digest(update: Mapping[str, np.ndarray], client_state_old: Mapping[str, np.ndarray],
                      client_state_new: Mapping[str, np.ndarray]) -> bytes:
  """What a hospital's attestation signs for its reply: the digest of its update, and, when it
  sends client state the server adopts (SCAFFOLD's c_i, FedSA-LoRA's B), of that state too, so
  no state that leaves a hospital is taken on trust. Without client state it is the update's
  `tree_digest`, as in the simulation."""
  if not client_state_old and not client_state_new:
    return tree_digest(dict(update))
  return tree_digest({"update": dict(update), "client_state_old": dict(client_state_old),
                      "client_state_new": dict(client_state_new)})


def base_changes(current: Mapping[str, np.ndarray], original: Mapping[str, np.ndarray]
                 ) -> dict[str, np.ndarray]:
  """{dotted path: current value} of every base weight that differs from `original`; both are
  {dotted path: array} dicts of the base (`run.gates.base_tensors`); {} while unchanged."""
  return {k: v for k, v in current.items() if not np.array_equal(v, original[k])}


def with_base_changes(base: PyTree, arrays: Mapping[str, np.ndarray]) -> PyTree:
  """`base` with the weights `base_changes` sent put in place (exactly, in the base's dtype);
  the names are per layer also when `base` is stacked (`models.layer_stack`)."""
  flat = traverse_util.flatten_dict(unstack_layers(base))
  names = {".".join(map(str, p)): p for p in flat}
  known = {k: names[k] for k in arrays if k in names}  # the others are refused by name
  got = _take(arrays, known, {p: flat[p] for p in known.values()}, "base weights")
  changed = traverse_util.unflatten_dict({**flat, **got})
  return stack_layers(changed) if is_stacked(base) else changed


def _take(arrays: Mapping[str, np.ndarray], names: dict[str, Any], flat_like: dict[Any, Any],
          what: str) -> dict[Any, np.ndarray]:
  missing = sorted(set(names) - set(arrays))
  extra = sorted(set(arrays) - set(names))
  if missing or extra:
    raise MessageError(f"{what}: missing arrays {missing[:3]}, unexpected {extra[:3]}")
  out = {}
  for name, key in names.items():
    ref, arr = flat_like[key], np.asarray(arrays[name])
    if arr.shape == (1,) and np.shape(ref) == ():  # Flower's wire format sends 0-d as [1]
      arr = arr.reshape(())
    if arr.shape != tuple(np.shape(ref)):
      raise MessageError(f"{what}: {name} has shape {arr.shape}, expected {np.shape(ref)}")
    out[key] = arr.astype(np.asarray(ref).dtype if not hasattr(ref, "dtype") else ref.dtype)
  return out
