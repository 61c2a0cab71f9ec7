"""The default CPU demo with FedAdagrad (Adagrad on the server pseudo-gradient).

    python scripts/train.py --config=configs/fedadagrad.py --config.workdir=runs/fedadagrad
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/fedadagrad"
  c.fed.algorithm = "fedadagrad"
  c.fed.server_lr = 1e-2
  return c
