"""The default CPU demo with FedEx-LoRA (exact aggregation: the residual of the averaged product goes into the base).

    python scripts/train.py --config=configs/fedex_lora.py --config.workdir=runs/fedex_lora
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/fedex_lora"
  c.fed.algorithm = "fedex_lora"
  return c
