"""Privacy accounting with Google's dp-accounting (PLD accountant; RDP as a cross-check).

Events match the sampling the code actually does:
  example level  each local step of hospital h Poisson-samples its n_h records with q_h = E[B] / n_h
                 and truncates to the fixed B_max rows of the batch: one
                 `TruncatedSubsampledGaussianDpEvent(n_h, q_h, B_max, z)` per step, composed over
                 K steps x the rounds h took part in. Epsilon per hospital (add/remove one record).
  client level   all N clients every round: `GaussianDpEvent(z)` per round (add/remove one client).
                 m < N clients drawn without replacement: RDP's
                 `SampledWithoutReplacementDpEvent(N, m, Gaussian(z / 2))` (replace-one relation,
                 under which the clipped sum's sensitivity is 2C); PLD has no such event.
The run loop calls `after_round(ids)` once per finished round and `would_exceed()` before the next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import dp_accounting as dpa
from scipy import stats

PLD_DISCRETIZATION = 1e-3  # PLD value discretization (the default 1e-4 is 7x slower)
MIN_NOISE = 0.3  # calibration's lower end: below it subsampled PLDs take gigabytes (and eps > 50)


def poisson_max_batch(dataset_sizes: Sequence[int], expected_batch_size: int,
                      overflow: float = 1e-6) -> int:
  """B_max: the fixed batch rows, so a Poisson draw exceeds it with probability <= `overflow`.

  The truncation is accounted for exactly; B_max only trades memory for a tighter epsilon.
  """
  sizes = list(dataset_sizes)
  small = [n for n in sizes if n < expected_batch_size]
  if small:
    raise ValueError(f"a hospital has fewer records ({min(small)}) than the expected batch size "
                     f"{expected_batch_size}")
  return max(int(stats.binom.isf(overflow, n, expected_batch_size / n)) for n in sizes)


def example_step_event(dataset_size: int, expected_batch_size: float, max_batch_size: int,
                       noise_multiplier: float) -> dpa.DpEvent:
  return dpa.dp_event.TruncatedSubsampledGaussianDpEvent(
      dataset_size=dataset_size, sampling_probability=expected_batch_size / dataset_size,
      truncated_batch_size=max_batch_size, noise_multiplier=noise_multiplier)


def client_round_event(num_clients: int, clients_per_round: int,
                       noise_multiplier: float) -> tuple[dpa.DpEvent, str]:
  """(event of one DP-FedAvg round, accountant kind "pld" | "rdp_replace_one")."""
  if clients_per_round == num_clients:
    return dpa.dp_event.GaussianDpEvent(noise_multiplier), "pld"
  return dpa.dp_event.SampledWithoutReplacementDpEvent(
      num_clients, clients_per_round, dpa.dp_event.GaussianDpEvent(noise_multiplier / 2)), \
      "rdp_replace_one"


def _accountant(kind: str) -> dpa.PrivacyAccountant:
  if kind == "pld":
    return dpa.pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
  if kind == "rdp":
    return dpa.rdp.RdpAccountant()
  if kind == "rdp_replace_one":
    return dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
  raise ValueError(f"unknown accountant {kind!r}")


def epsilon(event: dpa.DpEvent, count: int, delta: float, kind: str = "pld") -> float:
  """Epsilon at `delta` of `event` composed `count` times (0 for count 0)."""
  if count == 0:
    return 0.0
  acc = _accountant(kind)
  acc.compose(event, count)
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
    local_steps: K. noise_multiplier: z. delta: the reported delta.
    target_epsilon: budget (0: none); `would_exceed` tells when the next round passes it.
  """

  names: list[str]
  dataset_sizes: list[int]
  expected_batch_size: float
  max_batch_size: int
  local_steps: int
  noise_multiplier: float
  delta: float
  target_epsilon: float = 0.0
  rounds_taken: list[int] = dataclasses.field(default_factory=list)

  kind = "pld"  # the accountant behind the reported epsilon

  def __post_init__(self):
    if not self.rounds_taken:
      self.rounds_taken = [0] * len(self.names)

  def _event(self, h: int) -> dpa.DpEvent:
    return example_step_event(self.dataset_sizes[h], self.expected_batch_size,
                              self.max_batch_size, self.noise_multiplier)

  def epsilons(self, rounds_taken: Sequence[int]) -> dict[str, float]:
    cache: dict[tuple[int, int], float] = {}  # hospitals of equal size share a value
    out = {}
    for h, name in enumerate(self.names):
      k = (self.dataset_sizes[h], rounds_taken[h])
      if k not in cache:
        cache[k] = epsilon(self._event(h), rounds_taken[h] * self.local_steps, self.delta)
      out[name] = cache[k]
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

  def would_exceed(self) -> bool:
    """Whether one more round (every hospital taking part) would pass target_epsilon."""
    if not self.target_epsilon:
      return False
    nxt = [r + 1 for r in self.rounds_taken]
    return max(self.epsilons(nxt).values()) > self.target_epsilon


@dataclasses.dataclass
class ClientAccountant:
  """The federation's epsilon of client-level DP-FedAvg (one event per round)."""

  num_clients: int
  clients_per_round: int
  noise_multiplier: float
  delta: float
  target_epsilon: float = 0.0
  rounds: int = 0

  @property
  def kind(self) -> str:
    """The accountant behind the reported epsilon: "pld" | "rdp_replace_one"."""
    return client_round_event(self.num_clients, self.clients_per_round, 1.0)[1]

  def epsilon_after(self, rounds: int) -> float:
    event, kind = client_round_event(self.num_clients, self.clients_per_round,
                                     self.noise_multiplier)
    return epsilon(event, rounds, self.delta, kind)

  def count(self, client_ids: Sequence[int]) -> None:
    del client_ids
    self.rounds += 1

  def after_round(self, client_ids: Sequence[int]) -> dict[str, float]:
    self.count(client_ids)
    return {"federation": self.epsilon_after(self.rounds)}

  def spent(self) -> dict[str, float]:
    return {"federation": self.epsilon_after(self.rounds)}

  def would_exceed(self) -> bool:
    return bool(self.target_epsilon) and self.epsilon_after(self.rounds + 1) > self.target_epsilon


def calibrate_example(dataset_sizes: Sequence[int], expected_batch_size: float,
                      max_batch_size: int, steps: int, target_epsilon: float,
                      delta: float) -> float:
  """z meeting the target for every hospital over `steps` local steps: the smallest hospital,
  sampled at the highest rate, binds."""
  n = min(dataset_sizes)
  return calibrate(lambda z: example_step_event(n, expected_batch_size, max_batch_size, z),
                   steps, target_epsilon, delta)


def calibrate_client(num_clients: int, clients_per_round: int, rounds: int,
                     target_epsilon: float, delta: float) -> float:
  kind = client_round_event(num_clients, clients_per_round, 1.0)[1]
  return calibrate(lambda z: client_round_event(num_clients, clients_per_round, z)[0], rounds,
                   target_epsilon, delta, kind)
