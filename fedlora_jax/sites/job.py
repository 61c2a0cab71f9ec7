"""The job both sides build from the same config: algorithm, local training, the engine."""

from __future__ import annotations

import json

import ml_collections

from fedlora_jax import federated as F
from fedlora_jax.run.setup import algorithm

UNSUPPORTED = {"fedex_lora": "it changes the base every round, which would have to travel to "
                             "every node"}


def check_job(cfg: ml_collections.ConfigDict) -> None:
  """Refuses what the sites mode cannot run, with the reason."""
  if cfg.fed.algorithm in UNSUPPORTED:
    raise ValueError(f"fed.algorithm={cfg.fed.algorithm} is not supported across sites: "
                     f"{UNSUPPORTED[cfg.fed.algorithm]}")
  if cfg.fed.centralized:
    raise ValueError("fed.centralized pools every hospital's data; it has no sites mode")


def local_training(cfg: ml_collections.ConfigDict, max_target_tokens: int) -> F.LocalTraining:
  """As the simulation builds it (`max_target_tokens`: the max over all hospitals)."""
  f = cfg.fed
  return F.LocalTraining(local_steps=f.local_steps, optimizer=f.local_optimizer,
                         learning_rate=f.local_lr, weight_decay=f.weight_decay,
                         grad_clip_norm=f.grad_clip_norm or None,
                         uniform_weights=f.uniform_weights, max_target_tokens=max_target_tokens)


def config_json(cfg: ml_collections.ConfigDict) -> str:
  return cfg.to_json(sort_keys=True)


def config_from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


__all__ = ["algorithm", "check_job", "config_from_json", "config_json", "local_training"]
