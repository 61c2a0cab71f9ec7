"""The default CPU demo with SCAFFOLD (control variates, option II).

    python scripts/train.py --config=configs/scaffold.py --config.workdir=runs/scaffold
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/scaffold"
  c.fed.algorithm = "scaffold"
  c.fed.local_optimizer = "sgd"  # SCAFFOLD's control variates assume SGD
  c.fed.local_lr = 0.5
  return c
