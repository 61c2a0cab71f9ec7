"""Privacy accounting with Google's dp-accounting (PLD accountant; RDP as a cross-check).

Events match the sampling the code actually does:
  example level  each local step of hospital h Poisson-samples its n_h records (with its secret
                 sampling key) with q_h = E[B] / n_h and truncates to the fixed B_max rows of the
                 batch: one `TruncatedSubsampledGaussianDpEvent(n_h, q_h, B_max, z)` per step,
                 composed over K steps x the rounds h took part in. Epsilon per hospital
                 (add/remove one training record).
  client level   fixed-m sampling from the config seed: `GaussianDpEvent(z)` per round a client
                 takes part in (add/remove one client), composed over the rounds it took part
                 in; the federation's epsilon is the largest. No amplification is credited: the
                 sample is public (seed, ledger, metrics).
                 Poisson client sampling (`privacy.client_sampling_rate` q, drawn with the
                 server's secret, truncated to the fixed m_max slots): one
                 `TruncatedSubsampledGaussianDpEvent(N, q, m_max, z)` per round run, composed
                 over the rounds -- the amplified epsilon, which holds against whoever sees only
                 the released adapters. The ledger and metrics.jsonl publish each round's
                 participants, which voids amplification for their readers: against them a
                 client has the unamplified epsilon of the rounds it took part in (reported
                 beside it). The budget (`target_epsilon`, calibration) is the amplified one.
The run loop calls `would_exceed(ids)` before a round (it never starts one that passes the
budget) and `after_round(ids)` once it has finished.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import dp_accounting as dpa
from scipy import stats

PLD_DISCRETIZATION = 1e-3  # PLD value discretization (the default 1e-4 is 7x slower)
MIN_NOISE = 0.3  # calibration's lower end: below it subsampled PLDs take gigabytes (and eps > 50)


OVERFLOW = 1e-6  # the probability that a Poisson draw exceeds its fixed cap


def binomial_cap(n: int, q: float, overflow: float = OVERFLOW) -> int:
  """The smallest cap a Binomial(n, q) draw exceeds with probability <= `overflow`."""
  return int(stats.binom.isf(overflow, n, q))


def poisson_max_batch(dataset_sizes: Sequence[int], expected_batch_size: int,
                      overflow: float = OVERFLOW) -> int:
  """B_max: the fixed batch rows, so a Poisson draw exceeds it with probability <= `overflow`.

  The truncation is accounted for exactly; B_max only trades memory for a tighter epsilon.
  """
  sizes = list(dataset_sizes)
  small = [n for n in sizes if n < expected_batch_size]
  if small:
    raise ValueError(f"a hospital has fewer records ({min(small)}) than the expected batch size "
                     f"{expected_batch_size}")
  return max(binomial_cap(n, expected_batch_size / n, overflow) for n in sizes)


def poisson_max_clients(num_clients: int, sampling_rate: float,
                        overflow: float = OVERFLOW) -> int:
  """m_max: the fixed client slots of a round under Poisson client sampling (at least 1). The
  truncation is accounted for exactly, as for `poisson_max_batch`."""
  return max(1, min(num_clients, binomial_cap(num_clients, sampling_rate, overflow)))


def example_step_event(dataset_size: int, expected_batch_size: float, max_batch_size: int,
                       noise_multiplier: float) -> dpa.DpEvent:
  return dpa.dp_event.TruncatedSubsampledGaussianDpEvent(
      dataset_size=dataset_size, sampling_probability=expected_batch_size / dataset_size,
      truncated_batch_size=max_batch_size, noise_multiplier=noise_multiplier)


def client_round_event(noise_multiplier: float) -> dpa.DpEvent:
  """The event of one DP-FedAvg round for a client that takes part in it."""
  return dpa.dp_event.GaussianDpEvent(noise_multiplier)


def client_sampled_round_event(num_clients: int, sampling_rate: float, max_clients: int,
                               noise_multiplier: float) -> dpa.DpEvent:
  """One DP-FedAvg round over N clients Poisson-sampled at rate q, truncated to m_max."""
  return dpa.dp_event.TruncatedSubsampledGaussianDpEvent(
      dataset_size=num_clients, sampling_probability=sampling_rate,
      truncated_batch_size=max_clients, noise_multiplier=noise_multiplier)


def _accountant(kind: str) -> dpa.PrivacyAccountant:
  if kind == "pld":
    return dpa.pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
  if kind == "rdp":
    return dpa.rdp.RdpAccountant()
  raise ValueError(f"unknown accountant {kind!r}")


def epsilon(event: dpa.DpEvent, count: int, delta: float, kind: str = "pld") -> float:
  """Epsilon at `delta` of `event` composed `count` times (0 for count 0)."""
  if count == 0:
    return 0.0
  acc = _accountant(kind)
  acc.compose(event, count)
  return float(acc.get_epsilon(delta))


def releases_epsilon(releases: Sequence[Mapping[str, Any]], delta: float) -> float:
  """Epsilon at `delta` of one hospital's records over DP-SGD releases, each {dataset_size,
  expected_batch_size, max_batch_size, noise_multiplier, steps}, whatever job made them:
  releases with the same parameters compose as one event `steps` times (the PLD a run's
  `ExampleAccountant` computes). Infinite when a release had no noise."""
  groups: collections.Counter = collections.Counter()
  for r in releases:
    if not float(r["noise_multiplier"]) > 0:
      return math.inf
    groups[(int(r["dataset_size"]), float(r["expected_batch_size"]), int(r["max_batch_size"]),
            float(r["noise_multiplier"]))] += int(r["steps"])
  if not groups:
    return 0.0
  acc = _accountant("pld")
  for params, steps in groups.items():
    acc.compose(example_step_event(*params), steps)
  return float(acc.get_epsilon(delta))


def calibrate(make_event, count: int, target_epsilon: float, delta: float,
              kind: str = "pld") -> float:
  """The smallest z >= MIN_NOISE whose `make_event(z)` composed `count` times meets the target."""
  return float(dpa.calibrate_dp_mechanism(
      lambda: _accountant(kind), lambda z: dpa.dp_event.SelfComposedDpEvent(make_event(z), count),
      target_epsilon, delta, dpa.LowerEndpointAndGuess(MIN_NOISE, 1.0), tol=1e-3))


@dataclasses.dataclass
class ExampleAccountant:
  """Per-hospital epsilon of example-level DP-SGD.

  Attributes:
    names / dataset_sizes: every hospital and its number of training records n_h.
    expected_batch_size / max_batch_size: E[B] and B_max of the Poisson batches.
    local_steps: K. noise_multiplier: z, or each hospital's own z (a list, in `names` order).
    delta: the reported delta.
    target_epsilon: budget (0: none); `would_exceed` tells whether a round would pass it.
  """

  names: list[str]
  dataset_sizes: list[int]
  expected_batch_size: float
  max_batch_size: int
  local_steps: int
  noise_multiplier: float | list[float]
  delta: float
  target_epsilon: float = 0.0
  rounds_taken: list[int] = dataclasses.field(default_factory=list)
  # (dataset size, z, rounds) -> epsilon: the budget check before a round, the hook's look-ahead
  # and the round's record ask for the same values; each PLD composition runs once.
  _cache: dict[tuple[int, float, int], float] = dataclasses.field(default_factory=dict,
                                                                  repr=False)

  kind = "pld"  # the accountant behind the reported epsilon

  def __post_init__(self):
    if not self.rounds_taken:
      self.rounds_taken = [0] * len(self.names)

  def _z(self, h: int) -> float:
    z = self.noise_multiplier
    return float(z[h]) if isinstance(z, (list, tuple)) else float(z)

  def _event(self, h: int) -> dpa.DpEvent:
    return example_step_event(self.dataset_sizes[h], self.expected_batch_size,
                              self.max_batch_size, self._z(h))

  def epsilons(self, rounds_taken: Sequence[int]) -> dict[str, float]:
    out = {}
    for h, name in enumerate(self.names):  # hospitals of equal size and z share a value
      k = (self.dataset_sizes[h], self._z(h), rounds_taken[h])
      if k not in self._cache:
        self._cache[k] = epsilon(self._event(h), rounds_taken[h] * self.local_steps, self.delta)
      out[name] = self._cache[k]
    return out

  def count(self, client_ids: Sequence[int]) -> None:
    """Counts a finished round of `client_ids` (also to replay rounds before a resume)."""
    for c in client_ids:
      self.rounds_taken[int(c)] += 1

  def after_round(self, client_ids: Sequence[int]) -> dict[str, float]:
    """Counts a finished round of `client_ids`; returns each hospital's epsilon so far."""
    self.count(client_ids)
    return self.epsilons(self.rounds_taken)

  def spent(self) -> dict[str, float]:
    """Each hospital's epsilon after the rounds counted so far."""
    return self.epsilons(self.rounds_taken)

  def would_exceed(self, client_ids: Sequence[int]) -> bool:
    """Whether a round of `client_ids` would take some hospital past target_epsilon."""
    if not self.target_epsilon:
      return False
    nxt = list(self.rounds_taken)
    for c in client_ids:
      nxt[int(c)] += 1
    return max(self.epsilons(nxt).values()) > self.target_epsilon


@dataclasses.dataclass
class ClientAccountant:
  """Client-level DP-FedAvg: each client's epsilon over the rounds it took part in (unamplified);
  the federation's epsilon (the guarantee every client has) is the largest. With Poisson client
  sampling (`sampling_rate` q > 0, `max_clients` m_max) the federation's epsilon is the amplified
  one over every round run, and `unamplified()` is the one against readers of the participants.

  Attributes:
    num_clients: N. noise_multiplier: z. delta: the reported delta.
    target_epsilon: budget (0: none) on the federation's epsilon (`spent()`).
    sampling_rate / max_clients: q and m_max of Poisson client sampling (0: fixed-m rounds).
  """

  num_clients: int
  noise_multiplier: float
  delta: float
  target_epsilon: float = 0.0
  sampling_rate: float = 0.0
  max_clients: int = 0
  rounds_taken: list[int] = dataclasses.field(default_factory=list)
  rounds_run: int = 0
  _cache: dict[tuple[str, int], float] = dataclasses.field(default_factory=dict, repr=False)

  kind = "pld"

  def __post_init__(self):
    if not self.rounds_taken:
      self.rounds_taken = [0] * self.num_clients
    if self.sampling_rate and not (0 < self.sampling_rate < 1 and self.max_clients >= 1):
      raise ValueError(f"Poisson client sampling needs 0 < q < 1 and m_max >= 1, got "
                       f"q={self.sampling_rate}, m_max={self.max_clients}")

  @property
  def amplified(self) -> bool:
    return self.sampling_rate > 0

  def _eps(self, which: str, count: int) -> float:
    if (which, count) not in self._cache:
      event = (client_sampled_round_event(self.num_clients, self.sampling_rate, self.max_clients,
                                          self.noise_multiplier) if which == "amplified"
               else client_round_event(self.noise_multiplier))
      self._cache[(which, count)] = epsilon(event, count, self.delta)
    return self._cache[(which, count)]

  def epsilon_after(self, rounds: int) -> float:
    """Unamplified epsilon of a client that took part in `rounds` rounds."""
    return self._eps("gaussian", rounds)

  def amplified_after(self, rounds: int) -> float:
    """Amplified epsilon after `rounds` Poisson-sampled rounds (every client, sampled or not)."""
    return self._eps("amplified", rounds)

  def count(self, client_ids: Sequence[int]) -> None:
    """Counts a finished round of `client_ids` (also to replay rounds before a resume)."""
    self.rounds_run += 1
    for c in client_ids:
      self.rounds_taken[int(c)] += 1

  def after_round(self, client_ids: Sequence[int]) -> dict[str, float]:
    self.count(client_ids)
    return self.spent()

  def spent(self) -> dict[str, float]:
    """{"federation": the budgeted epsilon so far}: amplified under Poisson sampling."""
    if self.amplified:
      return {"federation": self.amplified_after(self.rounds_run)}
    return self.unamplified()

  def unamplified(self) -> dict[str, float]:
    """{"federation": the largest per-client epsilon over the rounds each took part in}: what
    holds against a reader of the published participants (ledger, metrics)."""
    return {"federation": self.epsilon_after(max(self.rounds_taken))}

  def would_exceed(self, client_ids: Sequence[int]) -> bool:
    """Whether a round of `client_ids` would take the federation past target_epsilon."""
    if not self.target_epsilon:
      return False
    if self.amplified:
      return self.amplified_after(self.rounds_run + 1) > self.target_epsilon
    if len(client_ids) == 0:
      return False
    most = max(self.rounds_taken[int(c)] for c in client_ids) + 1
    return self.epsilon_after(max(most, max(self.rounds_taken))) > self.target_epsilon


def calibrate_example(dataset_sizes: Sequence[int], expected_batch_size: float,
                      max_batch_size: int, steps: int, target_epsilon: float,
                      delta: float) -> float:
  """z meeting the target for every hospital over `steps` local steps: the smallest hospital,
  sampled at the highest rate, binds."""
  n = min(dataset_sizes)
  return calibrate(lambda z: example_step_event(n, expected_batch_size, max_batch_size, z),
                   steps, target_epsilon, delta)


def calibrate_example_per_client(dataset_sizes: Sequence[int], expected_batch_size: float,
                                 max_batch_size: int, steps: int, target_epsilon: float,
                                 delta: float) -> list[float]:
  """Each hospital's own z meeting the target over `steps` local steps (hospitals of one size
  share theirs): a large hospital, sampled at a low rate, needs less noise than the smallest."""
  z = {n: calibrate(lambda z, n=n: example_step_event(n, expected_batch_size, max_batch_size, z),
                    steps, target_epsilon, delta) for n in sorted(set(dataset_sizes))}
  return [z[n] for n in dataset_sizes]


def calibrate_client(rounds: int, target_epsilon: float, delta: float, *, num_clients: int = 0,
                     sampling_rate: float = 0.0, max_clients: int = 0) -> float:
  """z meeting the target for a client that takes part in all `rounds` rounds, or (Poisson
  client sampling, q > 0) for the amplified epsilon of `rounds` sampled rounds."""
  if sampling_rate:
    return calibrate(lambda z: client_sampled_round_event(num_clients, sampling_rate,
                                                          max_clients, z),
                     rounds, target_epsilon, delta)
  return calibrate(client_round_event, rounds, target_epsilon, delta)
