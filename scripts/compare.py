"""Single-client LoRA vs the federated variants vs centralized, per seed, scored by the paper's
cross-client protocol and the own-test protocol (mean ± std over seeds, paired bootstrap
intervals for the gaps).

    python scripts/compare.py --config=configs/default.py --root=runs/compare --seeds=0,1,2 \
        [--variants=local,fedavg,fedprox,fedsa_lora,ffa_lora,fedex_lora,scaffold,centralized] \
        [--config.fed.rounds=15 ...]
    python scripts/compare.py --table=attack --root=runs/compare   # robust rules under attack
        [--rules=mean,median --attacks=none,gaussian]                # a part of the grid
    python scripts/compare.py --table=privacy --root=runs/compare  # DP-SGD at epsilon 1, 3, 8
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Base run config.",
                                          lock_config=True)
_ROOT = flags.DEFINE_string("root", "runs/compare", "Folder for the runs and compare.{md,json}.")
_VARIANTS = flags.DEFINE_list(
    "variants", ["local", "fedavg", "fedprox", "fedsa_lora", "ffa_lora", "fedex_lora", "scaffold",
                 "centralized"], "Methods to compare (see fedlora_jax.run.compare.VARIANTS).")
_SEEDS = flags.DEFINE_list("seeds", [], "Seeds to run every method with (default: config.seed).")
_DRAWS = flags.DEFINE_integer("bootstrap_draws", 2000, "Paired bootstrap resamples.")
_TABLE = flags.DEFINE_enum("table", "methods", ["methods", "attack", "privacy"],
                           "methods: the comparison above; attack / privacy: robustness under "
                           "attack and the privacy-utility table.")
_RULES = flags.DEFINE_list("rules", None, "--table=attack: the aggregation rules (default: all).")
_ATTACKS = flags.DEFINE_list("attacks", None, "--table=attack: the attacks, 'none' for clean "
                             "(default: all).")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from fedlora_jax.run.cli import run_cli
  from fedlora_jax.run.compare import VARIANTS, compare
  if _TABLE.value != "methods":
    from fedlora_jax.run.safeguard_tables import ATTACKS, RULES, safeguard_table
    grid = {"rules": _RULES.value or RULES, "attacks": _ATTACKS.value or ATTACKS}
    return run_cli(lambda: print(safeguard_table(_CONFIG.value, _TABLE.value, _ROOT.value,
                                                 **grid)))
  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError as e:
    raise app.UsageError(f"--seeds must be integers: {_SEEDS.value}") from e
  return run_cli(lambda: print(compare(_CONFIG.value, _VARIANTS.value, _ROOT.value, seeds,
                                       draws=_DRAWS.value)))


if __name__ == "__main__":
  flags.FLAGS.alsologtostderr = True
  app.run(main)
