"""The default CPU demo with SCAFFOLD (control variates from the applied, clipped gradients).

    python scripts/train.py --config=configs/scaffold.py --config.workdir=runs/scaffold
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/scaffold"
  c.fed.algorithm = "scaffold"
  return c
