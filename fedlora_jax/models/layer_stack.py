"""Per-layer vs stacked layouts of the decoder layers' params (`ModelConfig.scan_layers`).

Per layer (HF's names): `{"model": {"layers": {0: {...}, 1: {...}, ...}}}`, each leaf [..., *shape].
Stacked (the layer scan): `{"model": {"layers": {...}}}`, each leaf [..., L, *shape], the layer
axis after `axis` leading axes (a client axis, say).

A scanned model holds every decoder-layer param stacked, LoRA and its optimizer states included,
so the round's per-leaf work (optimizer, aggregation, norms) is one op per kind of projection,
not one per layer. Names stay per layer wherever a tensor leaves the process: HF checkpoints,
PEFT adapters (and so ledger digests and Flower messages) unstack at that boundary.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LAYERS = "layers"


def _layers(tree: Any) -> Any:
  model = tree.get("model") if isinstance(tree, dict) else None
  return model.get(LAYERS) if isinstance(model, dict) else None


def is_stacked(tree: Any) -> bool:
  """Whether `tree` (a pure param dict) holds its decoder layers stacked."""
  layers = _layers(tree)
  return isinstance(layers, dict) and bool(layers) and not any(isinstance(k, int) for k in layers)


def _with_layers(tree: dict, layers: Any) -> dict:
  return {**tree, "model": {**tree["model"], LAYERS: layers}}


def stack_layers(tree: dict, axis: int = 0) -> dict:
  """Per-layer -> stacked: the layer axis inserted at `axis` of every layer leaf."""
  layers = _layers(tree)
  if layers is None or is_stacked(tree):
    return tree
  per_layer = [layers[i] for i in range(len(layers))]
  stack = lambda *xs: (np.stack(xs, axis) if all(isinstance(x, np.ndarray) for x in xs)
                       else jnp.stack(xs, axis))
  return _with_layers(tree, jax.tree.map(stack, *per_layer))


def unstack_layers(tree: dict, axis: int = 0) -> dict:
  """Stacked -> per-layer: slices the layer axis at `axis` of every layer leaf."""
  if not is_stacked(tree):
    return tree
  layers = _layers(tree)
  num = jax.tree.leaves(layers)[0].shape[axis]
  take = lambda i: jax.tree.map(lambda x: _layer(x, axis, i), layers)
  return _with_layers(tree, {i: take(i) for i in range(num)})


def _layer(x: Any, axis: int, i: int) -> Any:
  if isinstance(x, jax.ShapeDtypeStruct):  # abstract trees (eval_shape)
    return jax.ShapeDtypeStruct(x.shape[:axis] + x.shape[axis + 1:], x.dtype)
  return x[(slice(None),) * axis + (i,)]
