"""Runs a federated job across hospitals on this machine with Flower: a SuperLink, and per
hospital a long-lived worker (`scripts/site_worker.py`: its model, data, key and client state,
compiled once) and a SuperNode (each with its own data, key and state directory), then the
ServerApp.

    python scripts/deploy_local.py --config=configs/default.py --config.workdir=runs/sites \
        [--config.fed.rounds=5 --config.data.hospitals='("cardiology","oncology")' ...]

Needs the `[flower]` extra. Local demo only: the Flower connections are insecure unless
`--config.sites.tls=True` (certificates generated for 127.0.0.1). One progress line per round;
every Flower process and worker is stopped on success, error and Ctrl-C. The hospitals' directories
(questions, keystores, client state, receipts) are under `<workdir>/deploy/hospitals/`.
"""

from __future__ import annotations

import signal
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Run config file.",
                                          lock_config=True)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from fedlora_jax.run.cli import run_cli
  from fedlora_jax.sites.deploy import deploy
  # SIGTERM cleans up like Ctrl-C; and Ctrl-C does, even when a shell started this in the
  # background (asynchronous commands inherit SIGINT ignored)
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, signal.default_int_handler)
  try:
    return run_cli(lambda: deploy(_CONFIG.value))
  except KeyboardInterrupt:  # every Flower process group was ended on the way out
    print(f"interrupted: every Flower process stopped; {_CONFIG.value.workdir} keeps the rounds "
          "already written (run the same command again to resume)", file=sys.stderr)
    return 130


if __name__ == "__main__":
  flags.FLAGS.alsologtostderr = True
  app.run(main)
