"""The job both sides build from the same config: algorithm, local training, the engine."""

from __future__ import annotations

import hashlib
import json

import ml_collections

from fedlora_jax.privacy.plan import check_privacy_config
from fedlora_jax.run.setup import algorithm, local_training


def check_job(cfg: ml_collections.ConfigDict) -> None:
  """Refuses what the sites mode cannot run, with the reason, before any process starts: a
  safeguard the config asks for is never dropped silently. DP runs where the simulation runs
  it, at the party that adds the noise (DP-SGD in each hospital's worker, DP-FedAvg at the
  server), and is refused where the simulation refuses it (`check_privacy_config`)."""
  if cfg.fed.centralized:
    raise ValueError("fed.centralized pools every hospital's data; it has no sites mode")
  if cfg.privacy.get("reproducible_noise", False):
    raise ValueError("privacy.reproducible_noise=True derives DP noise from the config seed "
                     "(no privacy); sites mode refuses it")
  check_privacy_config(cfg)
  if cfg.privacy.get("calibration", "shared") != "shared":
    raise ValueError("privacy.calibration='per_client' is simulation and pod only: a hospital "
                     "checks its z against the genesis rules' single noise multiplier")
  if cfg.privacy.get("client_sampling_rate", 0.0):
    raise ValueError(f"privacy.client_sampling_rate={cfg.privacy.client_sampling_rate}: sites mode "
                     "samples clients in the open (every node sees who is asked), so Poisson "
                     "sampling's amplification cannot hold there; refused")
  if cfg.data.get("clinics", 0):
    raise ValueError(f"data.clinics={cfg.data.clinics} simulates many clients; a site is a real "
                     "hospital (sites mode refuses it)")
  if cfg.attack.kind != "none":
    raise ValueError(f"attack.kind={cfg.attack.kind!r} is a simulation experiment; sites mode "
                     "refuses it")
  mode = cfg.eval.get("mode", "likelihood")  # job configs written before the field existed
  if mode != "likelihood":
    raise ValueError(f"eval.mode={mode!r}: the sites mode scores by likelihood only")


def job_id(cfg: ml_collections.ConfigDict) -> str:
  """A job's name at the nodes (its client-state directory): a digest of the server's run
  directory, which a resumed run keeps (its other settings, e.g. `resume`, may change)."""
  return hashlib.sha256(str(cfg.workdir).encode()).hexdigest()[:16]


def config_json(cfg: ml_collections.ConfigDict) -> str:
  return cfg.to_json(sort_keys=True)


def config_from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


__all__ = ["algorithm", "check_job", "config_from_json", "config_json", "local_training"]
