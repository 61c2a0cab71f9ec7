"""The default CPU demo with single-client LoRA baseline (each hospital trains alone; the paper's comparison).

    python scripts/train.py --config=configs/local.py --config.workdir=runs/local
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/local"
  c.fed.algorithm = "local"
  return c
