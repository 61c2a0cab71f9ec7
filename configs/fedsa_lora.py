"""The default CPU demo with FedSA-LoRA (A shared and averaged, B personal to each hospital).

    python scripts/train.py --config=configs/fedsa_lora.py --config.workdir=runs/fedsa_lora
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/fedsa_lora"
  c.fed.algorithm = "fedsa_lora"
  return c
