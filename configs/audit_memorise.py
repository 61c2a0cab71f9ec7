"""A config built to memorise, for the privacy audit (scripts/audit_privacy.py).

One small hospital ("clinic", 50 training records) trains alone for 800 local steps (40 rounds
of 20), so random-label canaries added to its training set are memorised when nothing stops it: without DP the audit's lower bound is clearly above 0; with DP-SGD it must stay below the
claimed epsilon.

    python scripts/audit_privacy.py --config=configs/audit_memorise.py --no_dp \
        --config.workdir=runs/audit_nodp
    python scripts/audit_privacy.py --config=configs/audit_memorise.py \
        --config.privacy.level=example --config.privacy.target_epsilon=8 \
        --config.workdir=runs/audit_eps8
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/audit"
  c.data.hospitals = ("clinic",)
  c.fed.rounds = 40
  c.fed.local_steps = 20
  c.fed.batch_size = 16
  c.fed.local_lr = 3e-3
  c.eval.round_max_test_per_client = 20
  c.ledger.enabled = False
  c.privacy.delta = 1e-5
  c.privacy.clip_norm = 1.0
  return c
