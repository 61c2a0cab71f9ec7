"""Partitioners: exactly-once assignment, determinism, measured skew."""

import numpy as np
import pytest

from fedlora_jax.data import (check_partition, dirichlet_partition, iid_partition, label_shares,
                              mean_max_label_share, natural_partition, partition_report,
                              quantity_skew_partition)

N, CLIENTS = 2000, 5
LABELS = np.random.default_rng(0).integers(0, 10, N).astype(str)  # 10 labels, ~balanced


def _exactly_once(parts, n=N):
  check_partition(parts, n)
  assert sum(len(p) for p in parts) == n


def test_iid_near_equal():
  parts = iid_partition(N, CLIENTS, seed=0)
  _exactly_once(parts)
  assert [len(p) for p in parts] == [400] * 5
  shares = label_shares(LABELS, parts)                      # [5, 10]
  overall = label_shares(LABELS, [np.arange(N)])[0]
  assert np.abs(shares - overall).max() < 0.06
  assert mean_max_label_share(LABELS, parts) < 0.16          # 1/10 plus sampling noise
  assert all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(N, CLIENTS, seed=0)))


def test_dirichlet_small_alpha_more_skewed():
  skewed = dirichlet_partition(LABELS, CLIENTS, alpha=0.1, seed=0)
  mild = dirichlet_partition(LABELS, CLIENTS, alpha=100.0, seed=0)
  _exactly_once(skewed)
  _exactly_once(mild)
  s_small = mean_max_label_share(LABELS, skewed)
  s_large = mean_max_label_share(LABELS, mild)
  assert s_small > 0.4 and s_large < 0.16 and s_small > 2.5 * s_large
  # averaged over seeds too, monotone in alpha
  mean_share = lambda a: np.mean([mean_max_label_share(
      LABELS, dirichlet_partition(LABELS, CLIENTS, alpha=a, seed=s)) for s in range(5)])
  assert mean_share(0.1) > mean_share(1.0) > mean_share(100.0)
  again = dirichlet_partition(LABELS, CLIENTS, alpha=0.1, seed=0)
  assert all(np.array_equal(a, b) for a, b in zip(skewed, again))
  with pytest.raises(ValueError):
    dirichlet_partition(LABELS, CLIENTS, alpha=0.0, seed=0)


def test_dirichlet_min_size():
  parts = dirichlet_partition(LABELS, 20, alpha=0.05, seed=1, min_size=10)
  _exactly_once(parts)
  assert min(len(p) for p in parts) >= 10


def test_quantity_skew():
  parts = quantity_skew_partition(N, CLIENTS, alpha=0.5, seed=0, min_size=20)
  _exactly_once(parts)
  sizes = np.array([len(p) for p in parts])
  assert sizes.min() >= 20 and sizes.max() / sizes.min() > 2
  even = quantity_skew_partition(N, CLIENTS, alpha=1000.0, seed=0)
  assert np.ptp([len(p) for p in even]) < 0.1 * N / CLIENTS


def test_natural_and_report():
  keys = ["medqa", "pubmedqa", "medqa", "medmcqa", "medqa"]
  labels = ["step1", "yes", "step1", "Anatomy", "step2&3"]
  parts = natural_partition(keys)
  _exactly_once(parts, 5)
  assert [p.tolist() for p in parts] == [[3], [0, 2, 4], [1]]   # medmcqa, medqa, pubmedqa
  ordered = natural_partition(keys, order=["pubmedqa", "medqa", "medmcqa"])
  assert [p.tolist() for p in ordered] == [[1], [0, 2, 4], [3]]
  report = partition_report(labels, parts, names=["medmcqa", "medqa", "pubmedqa"])
  assert report[1] == {"client": "medqa", "size": 3, "label_counts": {"step1": 2, "step2&3": 1},
                       "top_label": "step1", "top_share": pytest.approx(2 / 3)}
  with pytest.raises(ValueError):
    natural_partition(keys, order=["medqa"])
  with pytest.raises(ValueError):
    check_partition([np.array([0, 1]), np.array([1, 2])], 3)
