"""The default CPU demo with client-level DP-FedAvg and adaptive clipping (Andrew et al. 2021).

Each hospital's whole update is clipped, the server adds Gaussian noise to the sum and averages
uniformly; the clip norm tracks the median update norm. With six hospitals the guarantee is weak
(large epsilon): client-level DP needs hundreds of clients per round to be both private and useful.

    python scripts/train.py --config=configs/dp_fedavg.py --config.workdir=runs/dp_fedavg
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/dp_fedavg"
  c.privacy.level = "client"
  c.privacy.noise_multiplier = 0.5  # needs < 2 * count noise (6 clients / 20 = 0.3)
  c.privacy.clip_norm = 0.1  # the initial clip norm
  c.privacy.adaptive_clipping = True
  c.privacy.target_quantile = 0.5
  return c
