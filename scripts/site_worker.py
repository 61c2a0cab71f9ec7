"""A hospital's long-lived worker, started once next to its `flower-supernode` (same account,
same `--node-config`): it loads the base, tokenises the hospital's data and compiles the local
update once per job, keeps the hospital's key and client state, and answers every message the
node's ClientApp relays to it over `<state-dir>/worker/sock` (mode 0600).

    python scripts/site_worker.py --node_config='hospital="cardiology" train-file="..." ...'

The `--node_config` string is the one given to `flower-supernode --node-config`. Runs until
stopped (SIGTERM or Ctrl-C); started again, it resumes from the state directory.
"""

from __future__ import annotations

import signal
import sys

from absl import app, flags, logging

_NODE_CONFIG = flags.DEFINE_string("node_config", None, "The SuperNode's --node-config string.",
                                   required=True)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from flwr.common.config import parse_config_args

  from fedlora_jax.sites import channel
  from fedlora_jax.sites.node_config import NodeConfig, NodeConfigError
  from fedlora_jax.sites.worker import Worker
  signal.signal(signal.SIGTERM, signal.default_int_handler)  # leave through `serve`'s cleanup
  try:
    node = NodeConfig.parse(parse_config_args([_NODE_CONFIG.value]))
    worker = Worker(node)
    worker.serve()
  except (NodeConfigError, channel.ChannelError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    logging.info("worker stopped")
  return 0


if __name__ == "__main__":
  flags.FLAGS.alsologtostderr = True
  app.run(main)
