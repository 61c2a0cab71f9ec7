"""From a run config to the round's `Safeguards`, the accountant and the batch shape.

Reads `privacy.*`, `attack.*` and `fed.robust_*` (see configs/default.py); every inconsistent
combination is an error naming the fields.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from fedlora_jax.federated.attacks import Attack
from fedlora_jax.federated.robust import RobustRule
from fedlora_jax.federated.safeguards import Safeguards
from fedlora_jax.privacy import accounting as A
from fedlora_jax.privacy.dp_fedavg import AdaptiveClipping, ClientDP
from fedlora_jax.privacy.dp_sgd import ExampleDP

LEVELS = ("none", "example", "client")


@dataclasses.dataclass
class PrivacyPlan:
  """What a run needs for privacy and robustness.

  Attributes:
    safeguards: the round's plug-ins.
    accountant: `ExampleAccountant` / `ClientAccountant`, or None without DP.
    max_batch_size: example level: the fixed rows of Poisson-sampled batches (else None).
    noise_multiplier: z in use (calibrated when the config gives a target epsilon instead).
  """

  safeguards: Safeguards
  accountant: A.ExampleAccountant | A.ClientAccountant | None = None
  max_batch_size: int | None = None
  noise_multiplier: float = 0.0


def attackers(spec: str, names: Sequence[str]) -> tuple[int, ...]:
  """Client ids from `attack.clients`: "" (none), a count k (the first k), or names "a,b"."""
  spec = spec.strip()
  if not spec:
    return ()
  if spec.isdigit():
    k = int(spec)
    if not 0 < k <= len(names):
      raise ValueError(f"attack.clients={k} must be in [1, {len(names)}]")
    return tuple(range(k))
  wanted = [s.strip() for s in spec.split(",") if s.strip()]
  unknown = [w for w in wanted if w not in names]
  if unknown:
    raise ValueError(f"attack.clients names unknown clients {unknown}; known: {list(names)}")
  return tuple(sorted(names.index(w) for w in wanted))


def _noise(p, calibrate) -> float:
  if p.noise_multiplier < 0 or p.target_epsilon < 0:
    raise ValueError("privacy.noise_multiplier and privacy.target_epsilon must be >= 0")
  if p.noise_multiplier > 0:
    return float(p.noise_multiplier)
  if p.target_epsilon <= 0:
    raise ValueError(f"privacy.level={p.level!r} needs privacy.noise_multiplier > 0 or "
                     "privacy.target_epsilon > 0")
  z = calibrate()
  logging.info("privacy: noise multiplier %.4f calibrated for epsilon %.3g at delta %.3g", z,
               p.target_epsilon, p.delta)
  return z


def privacy_plan(cfg, names: Sequence[str], dataset_sizes: Sequence[int],
                 clients_per_round: int) -> PrivacyPlan:
  """The plan for a run over clients `names` with `dataset_sizes` training records each."""
  p, f = cfg.privacy, cfg.fed
  if p.level not in LEVELS:
    raise ValueError(f"unknown privacy.level {p.level!r}; known: {', '.join(LEVELS)}")
  if p.level != "none" and not 0 < p.delta < 1:
    raise ValueError(f"privacy.delta={p.delta} must be in (0, 1)")
  if p.adaptive_clipping and p.level != "client":
    raise ValueError("privacy.adaptive_clipping applies to privacy.level='client' only")
  robust = RobustRule(f.robust_rule, f=f.robust_f, norm_bound=f.robust_norm_bound,
                      gm_nu=f.robust_gm_nu, gm_iters=f.robust_gm_iters)
  robust.check_clients(clients_per_round)
  attack = Attack(cfg.attack.kind, attackers(cfg.attack.clients, list(names))
                  if cfg.attack.kind != "none" else (), cfg.attack.scale)
  n, m = len(names), clients_per_round
  if p.level == "example":
    b, steps = f.batch_size, f.local_steps
    b_max = A.poisson_max_batch(dataset_sizes, b)
    z = _noise(p, lambda: A.calibrate_example(dataset_sizes, b, b_max, f.rounds * steps,
                                              p.target_epsilon, p.delta))
    return PrivacyPlan(
        Safeguards(example_dp=ExampleDP(z, p.clip_norm, b), robust=robust, attack=attack),
        A.ExampleAccountant(list(names), list(dataset_sizes), b, b_max, steps, z, p.delta,
                            p.target_epsilon), b_max, z)
  if p.level == "client":
    z = _noise(p, lambda: A.calibrate_client(n, m, f.rounds, p.target_epsilon, p.delta))
    adaptive = None
    if p.adaptive_clipping:
      adaptive = AdaptiveClipping(p.target_quantile, p.clip_lr, p.count_noise or m / 20)
    client_dp = ClientDP(z, p.clip_norm, m, adaptive)
    if n < 100:
      logging.warning("client-level DP over %d clients: protecting a whole hospital among so few "
                      "needs noise that swamps the update, or gives a weak epsilon", n)
    return PrivacyPlan(Safeguards(client_dp=client_dp, robust=robust, attack=attack),
                       A.ClientAccountant(n, m, z, p.delta, p.target_epsilon), None, z)
  return PrivacyPlan(Safeguards(robust=robust, attack=attack))
