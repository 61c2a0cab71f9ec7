"""The job's rules, fixed in the genesis block: what every round block must follow.

  {"algorithm": "fedavg", "weighting": "num_samples" | "uniform",
   "robust": {"rule", "f", "norm_bound", "gm_nu", "gm_iters"},   # as federated/robust.py applies it
   "privacy": null | {"unit": "example" | "client", "delta",
                      "noise_multiplier"                 # z, or each client's z (a list,
                                                         # privacy.calibration="per_client")
                      [, "expected_clients": q N]},   # client level, Poisson client sampling
   "clients_per_round": m,           # the sample size of a round (Poisson: its cap, the slots)
   "cosign": "participants" | "none",   # who co-signs each round block (sites mode: none, for now)
   "base_digest": null | hex}   # the frozen base every round trains over, as stored (quantized
                                # or not): `tree_digest` of its HF-named tensors (run.gates)

The weights a block records are the ones the aggregation applies under these rules
(`applied_weights`): client-level DP-FedAvg gives every accepted client 1/m of its clipped update
(1/(q N) under Poisson client sampling, whatever the round's realized count),
a robust rule other than the mean has no per-client weight (null), otherwise the signed counts
normalised by `weighting`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from fedlora_jax.ledger.block import PRIVACY_UNITS, WEIGHTINGS, weights_of

RULE_KEYS = {"algorithm", "weighting", "robust", "privacy", "clients_per_round", "cosign",
             "base_digest"}
ROBUST_KEYS = {"rule", "f", "norm_bound", "gm_nu", "gm_iters"}
ROBUST_RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "geometric_median")
PRIVACY_RULE_KEYS = {"unit", "delta", "noise_multiplier"}
POISSON_RULE_KEY = "expected_clients"  # client level with Poisson client sampling only
COSIGNERS = ("participants", "none")


def make_rules(*, algorithm: str, weighting: str = "num_samples", robust_rule: str = "mean",
               robust_f: int = 1, norm_bound: float = 0.0, gm_nu: float = 0.1,
               gm_iters: int = 3, privacy_unit: str | None = None, delta: float = 0.0,
               noise_multiplier: float | Sequence[float] = 0.0, clients_per_round: int,
               expected_clients: float | None = None, cosign: str = "participants",
               base_digest: str | None = None) -> dict[str, Any]:
  """A checked rules dict (raises ValueError naming the bad field)."""
  rules = {
      "algorithm": algorithm, "weighting": weighting,
      "robust": {"rule": robust_rule, "f": int(robust_f), "norm_bound": float(norm_bound),
                 "gm_nu": float(gm_nu), "gm_iters": int(gm_iters)},
      "privacy": None if privacy_unit is None else {
          "unit": privacy_unit, "delta": float(delta),
          "noise_multiplier": ([float(z) for z in noise_multiplier]
                               if isinstance(noise_multiplier, (list, tuple))
                               else float(noise_multiplier)),
          **({} if expected_clients is None else {POISSON_RULE_KEY: float(expected_clients)})},
      "clients_per_round": int(clients_per_round), "cosign": cosign,
      "base_digest": base_digest,
  }
  problem = rules_problem(rules)
  if problem is not None:
    raise ValueError(f"ledger rules: {problem}")
  return rules


def _number(value: Any) -> bool:
  return type(value) in (int, float) and math.isfinite(value)


def noise_multiplier_ok(value: Any) -> bool:
  """A noise multiplier as rules and blocks record it: z >= 0, or a non-empty list of them."""
  zs = value if isinstance(value, list) else [value]
  return bool(zs) and all(_number(z) and z >= 0 for z in zs)


def _count(value: Any) -> bool:
  return type(value) is int and 0 <= value < 2**32


def rules_problem(rules: Any) -> str | None:
  """Why `rules` is not a valid rules dict (None when it is)."""
  if not isinstance(rules, dict) or set(rules) != RULE_KEYS:
    return f"malformed rules (keys: {sorted(RULE_KEYS)})"
  if not isinstance(rules["algorithm"], str) or not rules["algorithm"]:
    return "malformed algorithm name"
  if rules["weighting"] not in WEIGHTINGS:
    return f"unknown weighting {rules['weighting']!r}"
  robust = rules["robust"]
  if not isinstance(robust, dict) or set(robust) != ROBUST_KEYS:
    return f"malformed robust rule (keys: {sorted(ROBUST_KEYS)})"
  if robust["rule"] not in ROBUST_RULES:
    return f"unknown robust rule {robust['rule']!r}"
  if not (_count(robust["f"]) and _count(robust["gm_iters"]) and robust["gm_iters"] >= 1
          and _number(robust["norm_bound"]) and robust["norm_bound"] >= 0
          and _number(robust["gm_nu"]) and robust["gm_nu"] > 0):
    return "robust rule parameters out of range"
  privacy = rules["privacy"]
  if privacy is not None:
    if not isinstance(privacy, dict) or set(privacy) - {POISSON_RULE_KEY} != PRIVACY_RULE_KEYS:
      return f"malformed privacy rule (keys: {sorted(PRIVACY_RULE_KEYS)})"
    if POISSON_RULE_KEY in privacy and not (
        privacy["unit"] == "client" and _number(privacy[POISSON_RULE_KEY])
        and _count(rules["clients_per_round"])
        and 0 < privacy[POISSON_RULE_KEY] <= rules["clients_per_round"]):
      return "expected_clients must be a client-level number in (0, clients_per_round]"
    if privacy["unit"] not in PRIVACY_UNITS:
      return f"unknown privacy unit {privacy['unit']!r}"
    if not (_number(privacy["delta"]) and 0 < privacy["delta"] < 1
            and noise_multiplier_ok(privacy["noise_multiplier"])):
      return "privacy delta or noise multiplier out of range"
  if not _count(rules["clients_per_round"]) or rules["clients_per_round"] < 1:
    return "clients_per_round must be a positive integer"
  if rules["cosign"] not in COSIGNERS:
    return f"unknown co-signing rule {rules['cosign']!r}"
  base = rules["base_digest"]
  if base is not None and not (isinstance(base, str) and len(base) == 64
                               and all(c in "0123456789abcdef" for c in base)):
    return "malformed base digest (64 lowercase hex characters or null)"
  return None


def applied_weights(num_samples: Sequence[int], rules: Mapping[str, Any]) -> list[float | None]:
  """The weight the aggregation gives each accepted client's update, in order (see module doc)."""
  privacy = rules["privacy"]
  if privacy is not None and privacy["unit"] == "client":
    return [1.0 / _divisor(rules) for _ in num_samples]
  if rules["robust"]["rule"] != "mean":
    return [None for _ in num_samples]
  return list(weights_of(num_samples, rules["weighting"]))


def describe_weights(rules: Mapping[str, Any]) -> str:
  """How `applied_weights` weighs, in words (for error messages)."""
  privacy = rules["privacy"]
  if privacy is not None and privacy["unit"] == "client":
    return f"DP-FedAvg 1/{_divisor(rules):g}"
  if rules["robust"]["rule"] != "mean":
    return f"{rules['robust']['rule']} (no per-client weight)"
  return rules["weighting"]


def _divisor(rules: Mapping[str, Any]) -> float:
  """DP-FedAvg's fixed divisor: q N under Poisson client sampling, else the round size m."""
  return rules["privacy"].get(POISSON_RULE_KEY, rules["clients_per_round"])
