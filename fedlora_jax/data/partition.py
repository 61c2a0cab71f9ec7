"""Non-IID partitioners: each returns one index array per client, every example exactly once.

All are deterministic given their seed. `labels` is a sequence of hashable labels (e.g.
`[r.label for r in records]`, the ICD chapter or the MedMCQA subject).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def natural_partition(keys: Sequence[Hashable],
                      order: Sequence[Hashable] | None = None) -> list[np.ndarray]:
  """One client per distinct key (source, hospital, specialty), in `order` or sorted order."""
  keys_arr = np.asarray(keys, dtype=object)
  names = list(order) if order is not None else sorted(set(keys), key=str)
  missing = set(keys) - set(names)
  if missing:
    raise ValueError(f"keys {sorted(missing, key=str)} are not in order={names}")
  return [np.flatnonzero(keys_arr == name) for name in names]


def iid_partition(num_examples: int, num_clients: int, seed: int) -> list[np.ndarray]:
  """A random permutation cut into near-equal parts (sizes differ by at most one)."""
  perm = np.random.default_rng([seed, 10]).permutation(num_examples)
  return [np.sort(p) for p in np.array_split(perm, num_clients)]


def dirichlet_partition(labels: Sequence[Hashable], num_clients: int, alpha: float, seed: int,
                        min_size: int = 1, max_tries: int = 100) -> list[np.ndarray]:
  """Label skew: each label's examples are split over clients by proportions ~ Dirichlet(alpha).

  Small alpha gives clients dominated by few labels; large alpha approaches IID. Draws are
  repeated (deterministically) until every client has at least `min_size` examples.
  """
  if alpha <= 0:
    raise ValueError(f"alpha must be > 0, got {alpha}")
  _, label_ids = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
  if len(label_ids) < num_clients * min_size:
    raise ValueError(f"{len(label_ids)} examples cannot give {num_clients} clients {min_size} each")
  rng = np.random.default_rng([seed, 11])
  for _ in range(max_tries):
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for label in range(label_ids.max() + 1):
      idx = rng.permutation(np.flatnonzero(label_ids == label))
      cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha)))[:-1] * len(idx)).astype(int)
      for client, chunk in enumerate(np.split(idx, cuts)):
        parts[client].extend(chunk.tolist())
    if min(len(p) for p in parts) >= min_size:
      return [np.sort(np.asarray(p, np.int64)) for p in parts]
  raise ValueError(f"no Dirichlet({alpha}) draw gave every client {min_size} examples "
                   f"in {max_tries} tries")


def quantity_skew_partition(num_examples: int, num_clients: int, alpha: float, seed: int,
                            min_size: int = 1) -> list[np.ndarray]:
  """Size skew with IID content: client sizes ~ Dirichlet(alpha) (each >= min_size)."""
  if num_examples < num_clients * min_size:
    raise ValueError(f"{num_examples} examples cannot give {num_clients} clients {min_size} each")
  rng = np.random.default_rng([seed, 12])
  spare = num_examples - num_clients * min_size
  raw = rng.dirichlet(np.full(num_clients, alpha)) * spare
  sizes = np.floor(raw).astype(np.int64)
  sizes[np.argsort(-(raw - sizes), kind="stable")[: spare - sizes.sum()]] += 1
  sizes += min_size
  perm = rng.permutation(num_examples)
  return [np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])]


def label_shares(labels: Sequence[Hashable], parts: Sequence[np.ndarray]) -> np.ndarray:
  """[clients, labels] float: each client's label distribution (label order: sorted str)."""
  names, label_ids = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
  counts = np.stack([np.bincount(label_ids[p], minlength=len(names)) for p in parts])
  return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def mean_max_label_share(labels: Sequence[Hashable], parts: Sequence[np.ndarray]) -> float:
  """Mean over clients of the share of their most frequent label (1/L for IID, 1 if pure)."""
  return float(label_shares(labels, parts).max(axis=1).mean())


def partition_report(labels: Sequence[Hashable], parts: Sequence[np.ndarray],
                     names: Sequence[str] | None = None) -> list[dict[str, object]]:
  """Per client: name, size, label counts, top label and its share."""
  labels_arr = np.asarray(labels, dtype=str)
  rows = []
  for c, p in enumerate(parts):
    values, counts = np.unique(labels_arr[p], return_counts=True)
    top = int(np.argmax(counts)) if len(p) else -1
    rows.append({"client": names[c] if names is not None else str(c), "size": int(len(p)),
                 "label_counts": {str(v): int(n) for v, n in zip(values, counts)},
                 "top_label": str(values[top]) if len(p) else "",
                 "top_share": float(counts[top] / len(p)) if len(p) else 0.0})
  return rows


def check_partition(parts: Sequence[np.ndarray], num_examples: int) -> None:
  """Raises ValueError unless every index in [0, num_examples) is in exactly one part."""
  counts = np.bincount(np.concatenate(list(parts)).astype(np.int64), minlength=num_examples)
  if len(counts) != num_examples or not np.all(counts == 1):
    raise ValueError("partition does not assign every example exactly once")
