"""Runs (or resumes) a federated LoRA job.

    python scripts/train.py --config=configs/default.py --config.workdir=runs/demo \
        [--config.fed.rounds=20 --config.fed.algorithm=fedprox ...]
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Run config file.",
                                          lock_config=True)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from fedlora_jax.run.experiment import run  # after flag parsing: keeps --help fast
  quiet_library_logs()
  try:
    run(_CONFIG.value)
  except (ValueError, OSError, KeyError) as e:  # bad input: say what, exit non-zero
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    return 2
  return 0


def quiet_library_logs() -> None:
  """INFO lines from this project only (orbax and jax log every step at INFO)."""
  import logging as std_logging

  def ours(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "fedlora_jax" in record.pathname

  logging.get_absl_handler().addFilter(ours)


if __name__ == "__main__":
  flags.FLAGS.alsologtostderr = True
  app.run(main)
