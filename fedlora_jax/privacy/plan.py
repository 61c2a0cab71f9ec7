"""From a run config to the round's `Safeguards`, the accountant and the batch shape.

Reads `privacy.*`, `attack.*` and `fed.robust_*` (see configs/default.py); every inconsistent
combination is an error naming the fields. `PrivacyPlan.record()` is what a run writes to
`privacy.json` at its start; a resume passes it back (`recorded`) and keeps its noise multiplier,
so finished rounds are never re-accounted at another z, and any other accounting field that
changed is refused.
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
# example level with a target epsilon: one z for every hospital (the smallest binds), or each
# hospital its own z reaching the same epsilon
CALIBRATIONS = ("shared", "per_client")
LEVEL_NAMES = {"example": "example-level (one training record)",
               "client": "client-level (one hospital)"}
# Refused with client-level DP, and why: per-client state that would leave each client (or be
# released per hospital) unclipped and unnoised.
CLIENT_DP_REFUSED = {
    "scaffold": "its per-client control variates reach the server unclipped and unnoised",
    "fedsa_lora": "each hospital's personal B is trained, checkpointed and exported without "
                  "client-level noise",
    "local": "each hospital's own adapter is trained, checkpointed and exported without "
             "client-level noise",
}


class PrivacyResumeError(ValueError):
  """A resume whose accounting differs from the run's recorded privacy plan."""


@dataclasses.dataclass
class PrivacyPlan:
  """What a run needs for privacy and robustness.

  Attributes:
    safeguards: the round's plug-ins.
    accountant: `ExampleAccountant` / `ClientAccountant`, or None without DP.
    max_batch_size: example level: the fixed rows of Poisson-sampled batches (else None).
    sampling_rate / max_clients: Poisson client sampling's q and fixed slots m_max (0 / None:
      fixed-m rounds).
    noise_multiplier: z in use (calibrated when the config gives a target epsilon instead); a
      list of each client's own z with `privacy.calibration="per_client"`.
    reproducible_noise: research only: noise from the config seed, no guarantee.
    accounting: every value the epsilon depends on (written to privacy.json).
  """

  safeguards: Safeguards
  accountant: A.ExampleAccountant | A.ClientAccountant | None = None
  max_batch_size: int | None = None
  noise_multiplier: float | list[float] = 0.0
  reproducible_noise: bool = False
  accounting: dict = dataclasses.field(default_factory=dict)
  sampling_rate: float = 0.0
  max_clients: int | None = None

  def record(self) -> dict:
    """privacy.json: the accounting of this run (no secret)."""
    return {**self.accounting, "noise_multiplier": self.noise_multiplier}


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


def _noise(p, calibrate, recorded: dict | None) -> float | list[float]:
  """z in use: the configured one, the recorded one (resume), or calibrated for the target (a
  list of each client's z when calibrated per client)."""
  if p.noise_multiplier > 0:
    return float(p.noise_multiplier)
  if recorded is not None:  # a resume keeps the z its finished rounds were accounted at
    z = recorded["noise_multiplier"]
    return [float(x) for x in z] if isinstance(z, list) else float(z)
  z = calibrate()
  logging.info("privacy: noise multiplier %s calibrated for epsilon %.3g at delta %.3g",
               z, p.target_epsilon, p.delta)
  return z


def check_privacy_config(cfg) -> None:
  """Refuses an inconsistent `privacy.*` (with `fed.*`), naming the fields: what every setting
  (simulation, pod, sites) checks before anything runs."""
  p, f = cfg.privacy, cfg.fed
  if p.level not in LEVELS:
    raise ValueError(f"unknown privacy.level {p.level!r}; known: {', '.join(LEVELS)}")
  if not isinstance(p.reproducible_noise, bool):
    raise ValueError(f"privacy.reproducible_noise must be True or False, got "
                     f"{p.reproducible_noise!r}")
  if p.level != "none" and not 0 < p.delta < 1:
    raise ValueError(f"privacy.delta={p.delta} must be in (0, 1)")
  calibration = p.get("calibration", "shared")  # configs written before the field existed
  if calibration not in CALIBRATIONS:
    raise ValueError(f"unknown privacy.calibration {calibration!r}; known: "
                     f"{', '.join(CALIBRATIONS)}")
  if calibration == "per_client" and not (p.level == "example" and p.target_epsilon > 0
                                            and p.noise_multiplier == 0):
    raise ValueError("privacy.calibration='per_client' calibrates each hospital's z for "
                     "privacy.target_epsilon: it needs privacy.level='example', target_epsilon "
                     "> 0 and noise_multiplier = 0")
  if p.adaptive_clipping and p.level != "client":
    raise ValueError("privacy.adaptive_clipping applies to privacy.level='client' only")
  if p.level == "client" and f.algorithm in CLIENT_DP_REFUSED:
    raise ValueError(f"fed.algorithm={f.algorithm!r} with privacy.level='client' is refused: "
                     f"{CLIENT_DP_REFUSED[f.algorithm]}")
  if p.level == "client" and f.centralized:
    raise ValueError("privacy.level='client' with fed.centralized=True is refused: one pooled "
                     "client has no client-level guarantee")
  check_client_sampling(cfg)
  if p.level == "none":
    return
  if p.noise_multiplier < 0 or p.target_epsilon < 0:
    raise ValueError("privacy.noise_multiplier and privacy.target_epsilon must be >= 0")
  if p.noise_multiplier <= 0 and p.target_epsilon <= 0:
    raise ValueError(f"privacy.level={p.level!r} needs privacy.noise_multiplier > 0 or "
                     "privacy.target_epsilon > 0")


def check_client_sampling(cfg) -> None:
  """Refuses `privacy.client_sampling_rate` where Poisson client sampling cannot run as
  accounted (the sites mode refuses it altogether: sites/job.py)."""
  p, f = cfg.privacy, cfg.fed
  q = p.get("client_sampling_rate", 0.0)
  if not q:
    return
  if not 0 < q < 1:
    raise ValueError(f"privacy.client_sampling_rate={q} must be in (0, 1) (0: off)")
  if p.level == "example":
    raise ValueError("privacy.client_sampling_rate samples clients for privacy.level='client' "
                     "(or 'none'); example-level DP samples each hospital's records")
  if f.clients_per_round:
    raise ValueError(f"fed.clients_per_round={f.clients_per_round} (fixed m) with "
                     f"privacy.client_sampling_rate={q} (Poisson) is refused: set one of them")
  if f.centralized:
    raise ValueError("privacy.client_sampling_rate with fed.centralized=True: one pooled "
                     "client is never sampled")
  if f.robust_rule != "mean" or f.robust_norm_bound > 0:
    raise ValueError(f"privacy.client_sampling_rate with fed.robust_rule={f.robust_rule!r} / "
                     f"fed.robust_norm_bound={f.robust_norm_bound}: robust rules assume a round "
                     "of fixed size")


def check_resume(plan: PrivacyPlan, recorded: dict | None) -> None:
  """Refuses a resume whose accounting differs from `recorded` (privacy.json), naming fields."""
  if recorded is None:
    return
  current = plan.record()
  changed = sorted(k for k in set(current) | set(recorded) if current.get(k) != recorded.get(k))
  if changed:
    raise PrivacyResumeError(
        f"this resume changes the privacy accounting ({', '.join(changed)}) recorded in "
        "privacy.json; finish the run as configured or start a new --config.workdir")


def privacy_plan(cfg, names: Sequence[str], dataset_sizes: Sequence[int],
                 clients_per_round: int, recorded: dict | None = None) -> PrivacyPlan:
  """The plan for a run over clients `names` with `dataset_sizes` training records each;
  `recorded`: the privacy.json of the run being resumed (None for a fresh run)."""
  p, f = cfg.privacy, cfg.fed
  check_privacy_config(cfg)
  robust = RobustRule(f.robust_rule, f=f.robust_f, norm_bound=f.robust_norm_bound,
                      gm_nu=f.robust_gm_nu, gm_iters=f.robust_gm_iters)
  robust.check_clients(clients_per_round)
  attack = Attack(cfg.attack.kind, attackers(cfg.attack.clients, list(names))
                  if cfg.attack.kind != "none" else (), cfg.attack.scale)
  n, m = len(names), clients_per_round
  common = {"level": p.level, "delta": p.delta, "clip_norm": p.clip_norm,
            "clients": list(names), "dataset_sizes": [int(x) for x in dataset_sizes],
            "reproducible_noise": p.reproducible_noise}
  if p.level == "example":
    b, steps = f.batch_size, f.local_steps
    b_max = A.poisson_max_batch(dataset_sizes, b)
    per_client = p.get("calibration", "shared") == "per_client"
    calibrate = A.calibrate_example_per_client if per_client else A.calibrate_example
    z = _noise(p, lambda: calibrate(dataset_sizes, b, b_max, f.rounds * steps, p.target_epsilon,
                                    p.delta), recorded)
    plan = PrivacyPlan(
        Safeguards(example_dp=ExampleDP(tuple(z) if isinstance(z, list) else z, p.clip_norm, b),
                   robust=robust, attack=attack),
        A.ExampleAccountant(list(names), list(dataset_sizes), b, b_max, steps, z, p.delta,
                            p.target_epsilon), b_max, z, p.reproducible_noise,
        {**common, "expected_batch_size": b, "max_batch_size": b_max, "local_steps": steps,
         **({"calibration": "per_client"} if per_client else {})})
  elif p.level == "client":
    q = float(p.get("client_sampling_rate", 0.0))
    m_max = A.poisson_max_clients(n, q) if q else None
    divisor = q * n if q else m  # DP-FedAvg's fixed divisor: q N under Poisson sampling
    z = _noise(p, lambda: A.calibrate_client(f.rounds, p.target_epsilon, p.delta, num_clients=n,
                                             sampling_rate=q, max_clients=m_max or 0), recorded)
    adaptive = None
    if p.adaptive_clipping:
      adaptive = AdaptiveClipping(p.target_quantile, p.clip_lr, p.count_noise or divisor / 20)
    client_dp = ClientDP(z, p.clip_norm, divisor, adaptive, q)
    if n < 100:
      logging.warning("client-level DP over %d clients: protecting a whole hospital among so few "
                      "needs noise that swamps the update, or gives a weak epsilon", n)
    sampling = {} if not q else {"client_sampling_rate": q, "max_clients_per_round": m_max,
                                 "expected_clients_per_round": divisor}
    plan = PrivacyPlan(
        Safeguards(client_dp=client_dp, robust=robust, attack=attack),
        A.ClientAccountant(n, z, p.delta, p.target_epsilon, q, m_max or 0), None, z,
        p.reproducible_noise,
        {**common, "clients_per_round": m if not q else None,
         "adaptive_clipping": bool(p.adaptive_clipping),
         "count_noise": None if adaptive is None else adaptive.count_noise, **sampling},
        q, m_max)
  else:
    q = float(p.get("client_sampling_rate", 0.0))
    return PrivacyPlan(Safeguards(robust=robust, attack=attack), sampling_rate=q,
                       max_clients=A.poisson_max_clients(n, q) if q else None)
  check_resume(plan, recorded)
  return plan
