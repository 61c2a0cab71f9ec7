"""The job both sides build from the same config: algorithm, local training, the engine."""

from __future__ import annotations

import json

import ml_collections

from fedlora_jax.run.setup import algorithm, local_training

def check_job(cfg: ml_collections.ConfigDict) -> None:
  """Refuses what the sites mode cannot run, with the reason."""
  if cfg.fed.centralized:
    raise ValueError("fed.centralized pools every hospital's data; it has no sites mode")
  mode = cfg.eval.get("mode", "likelihood")  # job configs written before the field existed
  if mode != "likelihood":
    raise ValueError(f"eval.mode={mode!r}: the sites mode scores by likelihood only")


def config_json(cfg: ml_collections.ConfigDict) -> str:
  return cfg.to_json(sort_keys=True)


def config_from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


__all__ = ["algorithm", "check_job", "config_from_json", "config_json", "local_training"]
