"""The centralized baseline: every hospital's training data pooled into one client.

    python scripts/train.py --config=configs/centralized.py --config.workdir=runs/centralized
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/centralized"
  c.fed.centralized = True
  return c
