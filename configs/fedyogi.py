"""The default CPU demo with FedYogi (Yogi on the server pseudo-gradient).

    python scripts/train.py --config=configs/fedyogi.py --config.workdir=runs/fedyogi
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/fedyogi"
  c.fed.algorithm = "fedyogi"
  c.fed.server_lr = 1e-2
  return c
