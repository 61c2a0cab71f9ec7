"""Accounting: our epsilons equal dp_accounting called directly (PLD; RDP cross-check) and, for
composed Gaussian mechanisms, the analytic Gaussian mechanism's closed form (independent of our
events); calibration meets the target within 1%, budget stops, the truncated-Poisson batch size."""

import dp_accounting as dpa
import numpy as np
import pytest
from scipy import optimize, stats

from fedlora_jax.privacy import accounting as A

DELTA = 1e-5


def _direct(event, count, accountant):
  accountant.compose(event, count)
  return accountant.get_epsilon(DELTA)


@pytest.mark.parametrize("z,n,steps", [(1.0, 400, 100), (0.8, 1000, 300), (2.0, 120, 50)])
def test_example_accountant_equals_dp_accounting(z, n, steps):
  b_max = A.poisson_max_batch([n], 8)
  acc = A.ExampleAccountant(["h0", "h1"], [n, 2 * n], 8, b_max, local_steps=steps // 2,
                            noise_multiplier=z, delta=DELTA)
  eps = acc.after_round([0])  # h0 took part once (steps // 2 local steps), h1 not at all
  eps = acc.after_round([0])
  event = dpa.dp_event.TruncatedSubsampledGaussianDpEvent(n, 8 / n, b_max, z)
  direct = _direct(event, steps // 2 * 2, dpa.pld.PLDAccountant(
      value_discretization_interval=A.PLD_DISCRETIZATION))
  np.testing.assert_allclose(eps["h0"], direct, rtol=1e-12)
  assert eps["h1"] == 0.0
  # Cross-checks: with B_max this large, truncation costs almost nothing (untruncated Poisson
  # PLD), and RDP is an upper bound of the tight PLD value, not far above it.
  poisson = dpa.dp_event.PoissonSampledDpEvent(8 / n, dpa.dp_event.GaussianDpEvent(z))
  pld_poisson = _direct(poisson, steps, dpa.pld.PLDAccountant())
  rdp = _direct(poisson, steps, dpa.rdp.RdpAccountant())
  np.testing.assert_allclose(eps["h0"], pld_poisson, rtol=0.01)
  assert pld_poisson <= rdp <= 1.5 * pld_poisson


def test_client_accountant_equals_dp_accounting_per_participation():
  """Each client's epsilon composes the rounds it took part in (no amplification is credited:
  participants are public); the federation's is the largest."""
  acc = A.ClientAccountant(100, noise_multiplier=1.2, delta=DELTA)
  for r in range(5):
    eps = acc.after_round([0, 1 + r])  # client 0 every round, the others once
  gauss = dpa.dp_event.GaussianDpEvent(1.2)
  np.testing.assert_allclose(eps["federation"], _direct(gauss, 5, dpa.pld.PLDAccountant(
      value_discretization_interval=A.PLD_DISCRETIZATION)), rtol=1e-12)
  np.testing.assert_allclose(eps["federation"], _direct(gauss, 5, dpa.rdp.RdpAccountant()),
                             rtol=0.25)  # RDP cross-check (looser)


def _analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
  """Balle & Wang (2018), Thm. 8: a Gaussian mechanism of sensitivity 1 and std sigma is
  (eps, delta)-DP iff Phi(1/(2 sigma) - eps sigma) - e^eps Phi(-1/(2 sigma) - eps sigma) <= delta."""
  def gap(eps):
    return (stats.norm.cdf(0.5 / sigma - eps * sigma)
            - np.exp(eps) * stats.norm.cdf(-0.5 / sigma - eps * sigma) - delta)
  return optimize.brentq(gap, 0.0, 500.0, xtol=1e-12)


@pytest.mark.parametrize("z,k", [(1.0, 1), (2.0, 10), (5.0, 40), (0.8, 3)])
def test_composed_gaussians_equal_the_analytic_gaussian_mechanism(z, k):
  """K Gaussian mechanisms of multiplier z compose exactly to one of multiplier z / sqrt(K)."""
  ours = A.ClientAccountant(6, noise_multiplier=z, delta=DELTA).epsilon_after(k)
  closed = _analytic_gaussian_epsilon(z / np.sqrt(k), DELTA)
  np.testing.assert_allclose(ours, closed, rtol=0.01, atol=2e-3)
  assert ours >= closed - 1e-9  # PLD's pessimistic discretization never under-reports


def test_calibration_meets_the_target_within_one_percent():
  sizes, b, steps = [300, 500], 8, 100
  b_max = A.poisson_max_batch(sizes, b)
  z = A.calibrate_example(sizes, b, b_max, steps, 3.0, DELTA)
  acc = A.ExampleAccountant(["a", "b"], sizes, b, b_max, steps, z, DELTA)
  eps = acc.after_round([0, 1])
  np.testing.assert_allclose(eps["a"], 3.0, rtol=0.01)  # the smaller hospital binds
  assert eps["b"] < eps["a"]
  z = A.calibrate_client(20, 8.0, DELTA)
  np.testing.assert_allclose(A.ClientAccountant(6, z, DELTA).epsilon_after(20), 8.0, rtol=0.01)


def test_would_exceed_stops_before_the_budget():
  acc = A.ClientAccountant(6, noise_multiplier=2.0, delta=DELTA, target_epsilon=3.0)
  rounds = 0
  while not acc.would_exceed(range(6)):
    acc.after_round(range(6))
    rounds += 1
  assert acc.epsilon_after(rounds) <= 3.0 < acc.epsilon_after(rounds + 1)
  assert not A.ClientAccountant(6, 2.0, DELTA).would_exceed(range(6))  # no target: never
  sizes = [50, 400]
  b_max = A.poisson_max_batch(sizes, 4)
  ex = A.ExampleAccountant(["small", "big"], sizes, 4, b_max, 5, 1.0, DELTA, target_epsilon=2.0)
  while not ex.would_exceed([0, 1]):
    ex.after_round([0, 1])
  assert ex.spent()["small"] <= 2.0 and not ex.would_exceed([1])  # only the big one may go on


def test_poisson_max_batch_is_the_smallest_safe_size():
  b_max = A.poisson_max_batch([200, 50], 8)
  overflow = [stats.binom.sf(b, n, 8 / n) for n in (200, 50) for b in (b_max, b_max - 1)]
  assert max(overflow[0], overflow[2]) <= 1e-6 < overflow[1]  # the larger hospital binds
  with pytest.raises(ValueError, match="fewer records"):
    A.poisson_max_batch([5], 8)
