"""Single-client LoRA vs the federated variants vs centralized, per seed, scored by the paper's
cross-client protocol and the own-test protocol (mean ± std over seeds, paired bootstrap
intervals for the gaps).

    python scripts/compare.py --config=configs/default.py --root=runs/compare --seeds=0,1,2 \
        [--variants=local,fedavg,fedprox,fedsa_lora,ffa_lora,fedex_lora,scaffold,centralized] \
        [--config.fed.rounds=15 ...]
    python scripts/compare.py --table=attack --root=runs/safeguards --seeds=0,1,2 \
        [--rules=mean,median --attacks=none,gaussian]      # robust rules under attack (a part)
    python scripts/compare.py --table=privacy --root=runs/safeguards --seeds=0,1,2 \
        [--methods=fedavg,ffa_lora --epsilons=1,2,4,8]     # LoRA vs FFA-LoRA under DP-SGD
        [--audit_canaries=100 --audit_hospital=clinic]    # + a one-run audit of each cell
    python scripts/compare.py --table=client_dp --root=runs/client_dp --seeds=0,1,2 \
        --config.data.clinics=300 --config.privacy.client_sampling_rate=0.05 \
        [--epsilons=1,2,4,8]   # client-level DP over many clinics, and the round's cost
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
_TABLE = flags.DEFINE_enum("table", "methods", ["methods", "attack", "privacy", "client_dp"],
                           "methods: the comparison above; attack / privacy / client_dp: "
                           "robustness under attack, the example-level and the client-level "
                           "privacy-utility tables.")
_RULES = flags.DEFINE_list("rules", None, "--table=attack: the aggregation rules (default: all).")
_ATTACKS = flags.DEFINE_list("attacks", None, "--table=attack: the attacks, 'none' for clean "
                             "(default: all).")
_METHODS = flags.DEFINE_list("methods", None, "--table=privacy: the methods (default: fedavg, "
                             "ffa_lora); 'fedavg+per_client': each hospital's own z.")
_EPSILONS = flags.DEFINE_list("epsilons", None, "--table=privacy/client_dp: the target epsilons "
                              "besides no DP (default: 1, 2, 4, 8).")
_AUDIT_CANARIES = flags.DEFINE_integer("audit_canaries", 0, "--table=privacy: audit every cell "
                                       "of the first seed with this many canaries (0: no audit).")
_FINISHED_ONLY = flags.DEFINE_bool("finished_only", False, "--table=attack/privacy/client_dp: run "
                                   "nothing; tabulate the seeds whose every cell has finished.")
_AUDIT_HOSPITAL = flags.DEFINE_string("audit_hospital", "", "--table=privacy: the hospital "
                                      "holding the canaries (default: the run's first).")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from fedlora_jax.run.cli import run_cli
  from fedlora_jax.run.compare import VARIANTS, compare
  try:
    seeds = [int(s) for s in _SEEDS.value]
    epsilons = [float(e) for e in _EPSILONS.value or ()]
  except ValueError as e:
    raise app.UsageError(f"--seeds must be integers and --epsilons numbers: {e}") from e
  if _TABLE.value == "client_dp":
    from fedlora_jax.run.client_dp_table import EPSILONS, client_dp_table
    return run_cli(lambda: print(client_dp_table(
        _CONFIG.value, _ROOT.value, seeds, epsilons=epsilons or EPSILONS, draws=_DRAWS.value,
        finished_only=_FINISHED_ONLY.value)))
  if _TABLE.value != "methods":
    from fedlora_jax.run import safeguard_tables as T
    grid = {"rules": _RULES.value or T.RULES, "attacks": _ATTACKS.value or T.ATTACKS,
            "methods": _METHODS.value or T.PRIVACY_METHODS, "epsilons": epsilons or T.EPSILONS}
    return run_cli(lambda: print(T.safeguard_table(
        _CONFIG.value, _TABLE.value, _ROOT.value, seeds, draws=_DRAWS.value,
        audit_canaries=_AUDIT_CANARIES.value, audit_hospital=_AUDIT_HOSPITAL.value,
        finished_only=_FINISHED_ONLY.value, **grid)))
  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
  return run_cli(lambda: print(compare(_CONFIG.value, _VARIANTS.value, _ROOT.value, seeds,
                                       draws=_DRAWS.value)))


if __name__ == "__main__":
  flags.FLAGS.alsologtostderr = True
  app.run(main)
