"""Fairness metrics against hand-computed values; the model x test-set matrix."""

import numpy as np
import pytest

from fedlora_jax.eval import cross_matrix, fairness_summary, harmonic_mean


def test_fairness_summary_hand_computed():
  s = fairness_summary([0.5, 1.0, 0.8])
  assert s["mean"] == pytest.approx(2.3 / 3)
  assert s["min"] == 0.5
  assert s["harmonic_mean"] == pytest.approx(3 / (2.0 + 1.0 + 1.25))   # 0.70588...
  mean = 2.3 / 3
  assert s["std"] == pytest.approx(np.sqrt(((0.5 - mean) ** 2 + (1.0 - mean) ** 2
                                            + (0.8 - mean) ** 2) / 3))
  assert s["per_client"] == [0.5, 1.0, 0.8]


def test_harmonic_mean_zero_and_equal():
  assert fairness_summary([0.9, 0.0, 0.7])["harmonic_mean"] == 0.0
  assert harmonic_mean([0.4, 0.4]) == pytest.approx(0.4)
  assert harmonic_mean([0.25, 1.0]) == pytest.approx(0.4)             # 2 / (4 + 1)
  with pytest.raises(ValueError):
    harmonic_mean([-0.1, 0.5])


def test_cross_matrix():
  models = [1.0, 2.0]
  tests = [0.1, 0.2, 0.3]
  m = cross_matrix(lambda model, data: model * data, models, tests)
  assert m.shape == (2, 3)
  np.testing.assert_allclose(m, [[0.1, 0.2, 0.3], [0.2, 0.4, 0.6]])
