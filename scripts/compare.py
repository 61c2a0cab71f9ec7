"""Single-client LoRA vs FedAvg vs FedProx vs centralized on the same data and seed, one table.

    python scripts/compare.py --config=configs/default.py --root=runs/compare \
        [--variants=local,fedavg,fedprox,centralized] [--config.fed.rounds=15 ...]
    python scripts/compare.py --table=attack --root=runs/compare   # robust rules under attack
    python scripts/compare.py --table=privacy --root=runs/compare  # DP-SGD at epsilon 1, 3, 8
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Base run config.",
                                          lock_config=True)
_ROOT = flags.DEFINE_string("root", "runs/compare", "Folder for the variants' run directories.")
_VARIANTS = flags.DEFINE_list("variants", ["local", "fedavg", "fedprox", "centralized"],
                              "Methods to compare (local, fedavg, fedprox, centralized).")
_TABLE = flags.DEFINE_enum("table", "methods", ["methods", "attack", "privacy"],
                           "methods: the comparison above; attack / privacy: issue 14's tables.")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from fedlora_jax.run.cli import run_cli
  from fedlora_jax.run.compare import compare
  if _TABLE.value != "methods":
    from fedlora_jax.run.safeguard_tables import safeguard_table
    return run_cli(lambda: print(safeguard_table(_CONFIG.value, _TABLE.value, _ROOT.value)))
  return run_cli(lambda: print(compare(_CONFIG.value, _VARIANTS.value, _ROOT.value)))


if __name__ == "__main__":
  flags.FLAGS.alsologtostderr = True
  app.run(main)
