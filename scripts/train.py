"""Runs (or resumes) a federated LoRA job.

    python scripts/train.py --config=configs/default.py --config.workdir=runs/demo \
        [--config.fed.rounds=20 --config.fed.algorithm=fedprox ...]

A workdir with checkpoints is resumed (config.resume=True); one holding a different run is refused.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Run config file.",
                                          lock_config=True)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from fedlora_jax.run.cli import run_cli
  from fedlora_jax.run.experiment import run
  return run_cli(lambda: run(_CONFIG.value))


if __name__ == "__main__":
  flags.FLAGS.alsologtostderr = True
  app.run(main)
