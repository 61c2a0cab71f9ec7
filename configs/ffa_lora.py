"""The default CPU demo with FFA-LoRA (A frozen at its shared init: averaging B is exact).

    python scripts/train.py --config=configs/ffa_lora.py --config.workdir=runs/ffa_lora
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/ffa_lora"
  c.fed.algorithm = "ffa_lora"
  c.fed.local_lr = 1e-2  # only B trains
  return c
