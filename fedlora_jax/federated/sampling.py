"""Which clients take part in a round.

Fixed m: `sample_clients`, deterministic per (seed, round) -- public, like the ledger that
records it. Poisson (client-level DP's amplification): `poisson_clients`, each client in with
probability q from the generator it is given (the server's secret one under DP), truncated to the
round's fixed m_max slots as the accountant's `TruncatedSubsampledGaussianDpEvent` assumes.
"""

from __future__ import annotations

import numpy as np
from jax_privacy import batch_selection


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


def poisson_clients(rng: np.random.Generator, num_clients: int, sampling_rate: float,
                    max_clients: int) -> np.ndarray:
  """Sorted ids [<= max_clients]: each of `num_clients` in independently with probability
  `sampling_rate`; a draw over `max_clients` keeps a uniformly random subset of that size
  (jax-privacy's `CyclicPoissonSampling`, as DP-SGD's batches). May be empty."""
  if not 0 < sampling_rate < 1 or max_clients < 1:
    raise ValueError(f"Poisson client sampling needs 0 < q < 1 and m_max >= 1, got "
                     f"q={sampling_rate}, m_max={max_clients}")
  sampler = batch_selection.CyclicPoissonSampling(
      sampling_prob=sampling_rate, iterations=1, truncated_batch_size=max_clients)
  drawn = next(iter(sampler.batch_iterator(num_clients, rng)))
  return np.sort(np.asarray(drawn, np.int64)).astype(np.int32)
