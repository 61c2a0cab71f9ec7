"""Which clients take part in a round: deterministic per (seed, round), partial participation."""

from __future__ import annotations

import numpy as np


def clients_per_round(num_clients: int, *, fraction: float | None = None,
                      count: int | None = None) -> int:
  """Number of clients sampled each round (a fixed number, so the round compiles once)."""
  if count is not None and fraction is not None:
    raise ValueError("give either a count or a fraction of clients per round, not both")
  if count is None:
    count = int(round((1.0 if fraction is None else fraction) * num_clients))
  if not 1 <= count <= num_clients:
    raise ValueError(f"clients per round must be in [1, {num_clients}], got {count} "
                     "(zero participating clients cannot make a round)")
  return count


def sample_clients(num_clients: int, per_round: int, *, seed: int, round_idx: int) -> np.ndarray:
  """Sorted ids [per_round] drawn without replacement; all clients when per_round == num_clients."""
  if per_round == num_clients:
    return np.arange(num_clients, dtype=np.int32)
  rng = np.random.default_rng([seed, round_idx, 0x5A4D])
  return np.sort(rng.choice(num_clients, size=per_round, replace=False)).astype(np.int32)
