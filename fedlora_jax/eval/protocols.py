"""The reference paper's two ways of scoring a model x hospital-test-set accuracy matrix.

A run's final matrix is [M, T]: row m is a model, column t a hospital's test set. M is 1 for a
shared model (FedAvg, FedProx, centralized, ...) and T for personal models (single-client LoRA,
FedSA-LoRA), row i being hospital i's.

* cross_client (the paper's protocol): every model on every hospital's test set. A model's
  mean / worst (min) / harmonic-mean accuracy is over the T test sets; a method's figure is the
  average over its M models (for single-client LoRA: the average specialist).
* own_test (personalised): hospital t is served by its own model on its own test set: the
  diagonal for personal models, the one row for a shared model (where both protocols agree).

Everything is vectorised over leading axes, so a bootstrap passes [B, M, T] at once.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Protocol = Literal["cross_client", "own_test"]
PROTOCOLS: tuple[Protocol, ...] = ("cross_client", "own_test")
METRICS = ("mean", "min", "harmonic_mean")


def _check(matrix: np.ndarray) -> None:
  m, t = matrix.shape[-2:]
  if m not in (1, t):
    raise ValueError(f"accuracy matrix {matrix.shape[-2:]}: expected 1 shared model or one "
                     f"model per test set ({t})")


def _summaries(acc: np.ndarray) -> dict[str, np.ndarray]:
  """[..., T] accuracies -> mean, min, harmonic_mean over the last axis (hmean 0 if any is 0)."""
  with np.errstate(divide="ignore"):
    hmean = np.where(np.any(acc == 0, axis=-1), 0.0,
                     acc.shape[-1] / np.sum(1.0 / acc, axis=-1))
  return {"mean": acc.mean(axis=-1), "min": acc.min(axis=-1), "harmonic_mean": hmean}


def per_test_set(matrix: np.ndarray, protocol: Protocol) -> np.ndarray:
  """[..., M, T] -> [..., T]: the accuracy each test set's column shows in the table.

  cross_client: the average model's accuracy on test set t; own_test: hospital t's model on t.
  """
  matrix = np.asarray(matrix, np.float64)
  _check(matrix)
  if protocol == "cross_client":
    return matrix.mean(axis=-2)
  if protocol == "own_test":
    return matrix[..., 0, :] if matrix.shape[-2] == 1 else np.diagonal(matrix, axis1=-2, axis2=-1)
  raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")


def score(matrix: np.ndarray, protocol: Protocol) -> dict[str, np.ndarray]:
  """[..., M, T] -> {mean, min, harmonic_mean: [...]} for the method under `protocol`."""
  matrix = np.asarray(matrix, np.float64)
  _check(matrix)
  if protocol == "cross_client":  # each model over all test sets, then the average model
    return {k: v.mean(axis=-1) for k, v in _summaries(matrix).items()}
  return _summaries(per_test_set(matrix, protocol))


def best_model(matrix: np.ndarray) -> int:
  """Index of the model (row) with the highest mean accuracy over all test sets."""
  return int(np.argmax(np.asarray(matrix, np.float64).mean(axis=1)))
