"""Fixed-shape client batches for one vmapped round, and the pooled (centralized) data.

A round's batch holds, for C clients, K local steps of B examples of length S: arrays
[C, K, B, S]. Each client draws from its own data only, by a fresh permutation every round
(seeded by (seed, round, client id)); a client with fewer than K*B examples goes through several
permutations of its data in a row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jax_privacy import batch_selection

from fedlora_jax.data.tokenization import TokenizedMCQ

BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask")
_STREAM = 20  # keeps these draws apart from the other seeded streams of the data package


def client_order(num_examples: int, count: int, *, seed: int, round_idx: int,
                 client_id: int) -> np.ndarray:
  """[count] int64: `count` indices into a client's data, fresh permutations back to back."""
  rng = np.random.default_rng([seed, _STREAM, round_idx, client_id])
  reps = -(-count // num_examples)
  return np.concatenate([rng.permutation(num_examples) for _ in range(reps)])[:count]


def round_batches(client_data: Sequence[TokenizedMCQ], *, local_steps: int, batch_size: int,
                  seed: int, round_idx: int, client_ids: Sequence[int] | None = None
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The batches of one round for the clients `client_ids` (default: all).

  Returns:
    batch: `input_ids` [C, K, B, S] int32, `attention_mask` [C, K, B, S] int32, `loss_mask`
      [C, K, B, S] float32, with C = len(client_ids), K = local_steps, B = batch_size.
    num_samples: [C] int32, each client's true number of training examples (FedAvg weights).
  """
  ids = list(range(len(client_data))) if client_ids is None else [int(c) for c in client_ids]
  seq_lens = {client_data[c].seq_len for c in ids}
  if len(seq_lens) != 1:
    raise ValueError(f"clients have different sequence lengths {sorted(seq_lens)}")
  count = local_steps * batch_size
  batch = {k: [] for k in BATCH_KEYS}
  for c in ids:
    data = client_data[c]
    if len(data) == 0:
      raise ValueError(f"client {c} has no training examples")
    idx = client_order(len(data), count, seed=seed, round_idx=round_idx, client_id=c)
    for k in BATCH_KEYS:
      rows = getattr(data, k)[idx]                            # [K*B, S]
      batch[k].append(rows.reshape(local_steps, batch_size, -1))
  stacked = {k: np.stack(v) for k, v in batch.items()}       # [C, K, B, S]
  num_samples = np.asarray([len(client_data[c]) for c in ids], np.int32)
  return stacked, num_samples


def pooled(client_data: Sequence[TokenizedMCQ],
           client_ids: Sequence[int] | None = None) -> TokenizedMCQ:
  """All clients' examples in one set (the centralized baseline is one client holding this)."""
  ids = range(len(client_data)) if client_ids is None else client_ids
  return TokenizedMCQ.concatenate([client_data[c] for c in ids])


def poisson_round_batches(client_data: Sequence[TokenizedMCQ], *, local_steps: int,
                          expected_batch_size: int, max_batch_size: int,
                          rngs: Sequence[np.random.Generator],
                          client_ids: Sequence[int] | None = None
                          ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Like `round_batches`, drawn as DP-SGD's accountant assumes (truncated Poisson sampling).

  Every step of client c includes each of its n_c records independently with probability
  q_c = expected_batch_size / n_c; a draw larger than max_batch_size keeps a uniformly random
  subset of that size (accounted for by `TruncatedSubsampledGaussianDpEvent`); jax-privacy's
  `CyclicPoissonSampling` draws it. `rngs[i]` is client `client_ids[i]`'s generator for this
  round, keyed by that hospital's secret (privacy/secret.py): which records a step used is as
  secret as its noise. Rows are padded to max_batch_size with an all-zero loss_mask (padding
  contributes nothing to DP-SGD's clipped sum).
  Returns arrays [C, K, max_batch_size, S] and num_samples [C] as `round_batches` does.
  """
  ids = list(range(len(client_data))) if client_ids is None else [int(c) for c in client_ids]
  if len(rngs) != len(ids):
    raise ValueError(f"{len(rngs)} sampling generators for {len(ids)} clients")
  seq_lens = {client_data[c].seq_len for c in ids}
  if len(seq_lens) != 1:
    raise ValueError(f"clients have different sequence lengths {sorted(seq_lens)}")
  batch = {k: [] for k in BATCH_KEYS}
  for c, rng in zip(ids, rngs):
    data = client_data[c]
    n = len(data)
    if n < expected_batch_size:
      raise ValueError(f"client {c} has {n} examples, fewer than the expected batch size "
                       f"{expected_batch_size}")
    sampler = batch_selection.CyclicPoissonSampling(
        sampling_prob=expected_batch_size / n, iterations=local_steps,
        truncated_batch_size=max_batch_size)
    idx_kb = np.zeros((local_steps, max_batch_size), np.int64)
    real_kb = np.zeros((local_steps, max_batch_size), bool)
    for k, drawn in enumerate(sampler.batch_iterator(n, rng)):
      idx_kb[k, :len(drawn)], real_kb[k, :len(drawn)] = drawn, True
    for k in BATCH_KEYS:
      rows = getattr(data, k)[idx_kb]                         # [K, B_max, S]
      batch[k].append(rows * real_kb[..., None] if k == "loss_mask" else rows)
  stacked = {k: np.stack(v) for k, v in batch.items()}
  return stacked, np.asarray([len(client_data[c]) for c in ids], np.int32)
