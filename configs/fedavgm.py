"""The default CPU demo with FedAvgM (server momentum).

    python scripts/train.py --config=configs/fedavgm.py --config.workdir=runs/fedavgm
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/fedavgm"
  c.fed.algorithm = "fedavgm"
  c.fed.server_lr = 1.0
  c.fed.server_momentum = 0.9
  return c
