"""A run's privacy from its config and run directory, shared by the simulation (`experiment`) and
the sites coordinator: the plan and the run nonce (privacy.json, kept by a resume), the meter that
records each round's epsilon, and the summary's privacy entry.

privacy.json holds the accounting (`PrivacyPlan.record()`) and the run's public nonce, which every
DP key binds (`run.dp_keys`): written at a fresh start, read back by a resume, which keeps both.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedlora_jax.privacy.plan import LEVEL_NAMES, PrivacyPlan, PrivacyResumeError, privacy_plan
from fedlora_jax.privacy.secret import NO_GUARANTEE
from fedlora_jax.privacy.spent import PrivacyMeter, amplification_entry
from fedlora_jax.run import multihost
from fedlora_jax.run.dp_keys import new_run_nonce
from fedlora_jax.run.workdir import write_json

PRIVACY_FILE = "privacy.json"  # the run's privacy accounting (no secret): a resume keeps it


def recorded_privacy(workdir: str) -> dict[str, Any] | None:
  """The privacy.json of `workdir` (None when there is none)."""
  path = os.path.join(workdir, PRIVACY_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def open_privacy(cfg, workdir: str, names: Sequence[str], dataset_sizes: Sequence[int],
                 clients_per_round: int, *, resuming: bool) -> tuple[PrivacyPlan, str]:
  """(the run's privacy plan, its run nonce): a fresh start draws the nonce (from the OS) and
  writes privacy.json; a resume reads both back and refuses a changed accounting
  (`PrivacyResumeError`). Every process takes part; process 0 reads and writes."""
  recorded = multihost.broadcast_json(recorded_privacy(workdir) if resuming else None)
  if resuming and cfg.privacy.level != "none" and recorded is None:
    raise PrivacyResumeError(f"{workdir} has checkpoints but no {PRIVACY_FILE}: its privacy "
                             "accounting is unknown; start a new --config.workdir")
  run_nonce = (recorded or {}).pop("run_nonce", None) or multihost.broadcast_json(
      new_run_nonce() if multihost.is_writer() else None)
  plan = privacy_plan(cfg, names, dataset_sizes, clients_per_round, recorded)
  if plan.accountant is not None and multihost.is_writer() and recorded is None:
    write_json(os.path.join(workdir, PRIVACY_FILE), {**plan.record(), "run_nonce": run_nonce})
  if plan.reproducible_noise and plan.accountant is not None:
    logging.warning("privacy.reproducible_noise=True: %s", NO_GUARANTEE)
  return plan, run_nonce


def privacy_meter(cfg, plan: PrivacyPlan, names: Sequence[str], start: int,
                  participants: Callable[[int], np.ndarray]) -> PrivacyMeter | None:
  """The meter of a DP run (None without DP), with the rounds before `start` (a resume) counted:
  `participants(r)` are round r's client ids."""
  if plan.accountant is None:
    return None
  for r in range(start):
    plan.accountant.count(participants(r))
  return PrivacyMeter(plan.accountant, cfg.privacy.level, cfg.privacy.delta,
                      plan.noise_multiplier, cfg.privacy.clip_norm, list(names),
                      plan.reproducible_noise)


def privacy_summary(cfg, plan: PrivacyPlan) -> dict[str, Any] | None:
  """summary.json's "privacy" entry: unit, delta, z and the epsilon spent (None without DP)."""
  if plan.accountant is None:
    return None
  return {"level": cfg.privacy.level, "unit": LEVEL_NAMES[cfg.privacy.level],
          "delta": cfg.privacy.delta, "noise_multiplier": plan.noise_multiplier,
          "epsilon": plan.accountant.spent(), **amplification_entry(plan.accountant),
          **({"guarantee": NO_GUARANTEE} if plan.reproducible_noise else {})}
