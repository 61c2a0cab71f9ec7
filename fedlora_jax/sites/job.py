"""The job both sides build from the same config: algorithm, local training, the engine."""

from __future__ import annotations

import json

import ml_collections

from fedlora_jax.run.setup import algorithm, local_training

def check_job(cfg: ml_collections.ConfigDict) -> None:
  """Refuses what the sites mode cannot run yet, with the reason, before any process starts:
  a safeguard the config asks for is never dropped silently."""
  if cfg.fed.centralized:
    raise ValueError("fed.centralized pools every hospital's data; it has no sites mode")
  if cfg.privacy.get("reproducible_noise", False):
    raise ValueError("privacy.reproducible_noise=True derives DP noise from the config seed "
                     "(no privacy); sites mode refuses it")
  if cfg.privacy.level != "none":
    raise ValueError(f"privacy.level={cfg.privacy.level!r} is not run by sites mode yet; use "
                     "the simulation (scripts/train.py) for DP runs")
  if cfg.fed.robust_rule != "mean" or cfg.fed.robust_norm_bound:
    raise ValueError(f"fed.robust_rule={cfg.fed.robust_rule!r} / fed.robust_norm_bound="
                     f"{cfg.fed.robust_norm_bound} are not run by sites mode yet; use the "
                     "simulation")
  if cfg.attack.kind != "none":
    raise ValueError(f"attack.kind={cfg.attack.kind!r} is a simulation experiment; sites mode "
                     "refuses it")
  mode = cfg.eval.get("mode", "likelihood")  # job configs written before the field existed
  if mode != "likelihood":
    raise ValueError(f"eval.mode={mode!r}: the sites mode scores by likelihood only")


def config_json(cfg: ml_collections.ConfigDict) -> str:
  return cfg.to_json(sort_keys=True)


def config_from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


__all__ = ["algorithm", "check_job", "config_from_json", "config_json", "local_training"]
