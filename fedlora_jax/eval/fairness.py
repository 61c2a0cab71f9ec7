"""Per-client fairness metrics and the model x client-test-set matrix."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

M = TypeVar("M")
D = TypeVar("D")


def harmonic_mean(values: Sequence[float]) -> float:
  """Harmonic mean of non-negative values; 0 if any value is 0."""
  v = np.asarray(values, np.float64)
  if v.size == 0 or np.any(v < 0):
    raise ValueError(f"need non-negative values, got {values}")
  if np.any(v == 0):
    return 0.0
  return float(v.size / np.sum(1.0 / v))


def fairness_summary(acc_per_client: Sequence[float]) -> dict[str, Any]:
  """mean, min (worst client), harmonic_mean, std (population), per_client (list)."""
  acc = np.asarray(acc_per_client, np.float64)
  return {"mean": float(acc.mean()), "min": float(acc.min()),
          "harmonic_mean": harmonic_mean(acc), "std": float(acc.std()),
          "per_client": [float(a) for a in acc]}


def cross_matrix(eval_fn: Callable[[M, D], float], models: Sequence[M],
                 test_sets: Sequence[D]) -> np.ndarray:
  """[models, test sets] float64: entry (i, j) = eval_fn(models[i], test_sets[j])."""
  return np.asarray([[eval_fn(m, d) for d in test_sets] for m in models], np.float64)
