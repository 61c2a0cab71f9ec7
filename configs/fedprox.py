"""The default CPU demo with FedProx (proximal term mu/2 ||w - w_global||^2 in each local loss).

    python scripts/train.py --config=configs/fedprox.py --config.workdir=runs/fedprox
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/fedprox"
  c.fed.algorithm = "fedprox"
  c.fed.fedprox_mu = 0.01
  return c
