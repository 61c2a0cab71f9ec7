"""The default CPU demo with FedAdam (Adam on the server pseudo-gradient).

    python scripts/train.py --config=configs/fedadam.py --config.workdir=runs/fedadam
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/fedadam"
  c.fed.algorithm = "fedadam"
  c.fed.server_lr = 1e-2
  return c
