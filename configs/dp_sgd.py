"""The default CPU demo with example-level DP-SGD (one training record) in every hospital (eps 8).

Batches are Poisson-sampled (expected size fed.batch_size, padded to a fixed size), each example's
gradient is clipped to privacy.clip_norm, Gaussian noise is added, and the noise multiplier is
calibrated with dp-accounting so that every hospital's records end at epsilon <= 8 after all
rounds; epsilon per hospital is reported after every round.

    python scripts/train.py --config=configs/dp_sgd.py --config.workdir=runs/dp_sgd
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/dp_sgd"
  c.privacy.level = "example"
  c.privacy.target_epsilon = 8.0
  c.privacy.delta = 1e-5
  c.privacy.clip_norm = 1.0
  return c
