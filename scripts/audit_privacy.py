"""Audits a run's privacy claim empirically, in one training run (Steinke, Nasr, Jagielski 2023).

    python scripts/audit_privacy.py --config=configs/audit_memorise.py \
        --config.privacy.level=example --config.privacy.target_epsilon=8 \
        --config.workdir=runs/audit_eps8
    python scripts/audit_privacy.py --config=configs/audit_memorise.py --no_dp \
        --config.workdir=runs/audit_nodp

Inserts --canaries random-label canaries, each with probability 1/2 (the auditor's own OS
randomness), into --hospital's training set, trains the config once, scores each canary by its
loss drop under the released global adapter, and prints the claimed epsilon of that hospital next
to the one-run lower bound at 1 - --significance confidence. Writes <workdir>/audit.json.
A DP run whose lower bound exceeds its claim has broken it; without DP on a config built to
memorise, the bound is clearly above 0 (the audit can see leakage).
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/audit_memorise.py",
                                          "Run config file.", lock_config=False)
_CANARIES = flags.DEFINE_integer("canaries", 256, "Canary records (each in with prob. 1/2).")
_HOSPITAL = flags.DEFINE_string("hospital", "", "Hospital holding the canaries (default: the "
                                "run's first).")
_NO_DP = flags.DEFINE_bool("no_dp", False, "Train without DP (privacy.level='none').")
_SIGNIFICANCE = flags.DEFINE_float("significance", 0.05, "1 - confidence of the lower bound.")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from fedlora_jax.run.cli import run_cli  # pylint: disable=import-outside-toplevel

  def job():
    from fedlora_jax.run.audit import audit  # pylint: disable=import-outside-toplevel
    cfg = _CONFIG.value
    if _NO_DP.value:
      cfg.privacy.level = "none"
    result = audit(cfg, canaries=_CANARIES.value, hospital=_HOSPITAL.value,
                   significance=_SIGNIFICANCE.value)
    claimed = result["claimed_epsilon"]
    print(f"audit: {result['hospital']} {result['level']} claimed epsilon "
          f"{'none (no DP)' if claimed is None else f'{claimed:.3g}'}, audited lower bound "
          f"{result['epsilon_lower_bound']:.3g} at {100 * (1 - result['significance']):.0f}% "
          f"confidence (delta {result['delta']:.0e}, {result['canaries']} canaries, "
          f"{result['included']} in) -> {os.path.join(cfg.workdir, 'audit.json')}")

  return run_cli(job)


if __name__ == "__main__":
  flags.FLAGS.alsologtostderr = True
  app.run(main)
