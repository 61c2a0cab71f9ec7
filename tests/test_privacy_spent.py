"""PrivacyMeter: the record's privacy entry and the ledger field, against the accountant."""

import jax.numpy as jnp
import numpy as np

from fedlora_jax.privacy import accounting as A
from fedlora_jax.privacy.spent import PrivacyMeter, ledger_field

NAMES = ["a", "b", "c"]


def test_example_level_entry_and_ledger_field():
  acc = A.ExampleAccountant(NAMES, [40, 80, 80], 4, 12, 2, 1.5, 1e-5)
  meter = PrivacyMeter(acc, "example", 1e-5, 1.5, 0.8, NAMES)
  first = meter.after_round(["a", "c"])
  second = meter.after_round(["a", "b"])
  direct = lambda n, rounds: A.epsilon(A.example_step_event(n, 4, 12, 1.5), 2 * rounds, 1e-5)
  assert first["epsilon"] == {"a": direct(40, 1), "b": 0.0, "c": direct(80, 1)}
  assert second["epsilon"] == {"a": direct(40, 2), "b": direct(80, 1), "c": direct(80, 1)}
  assert (second["level"], second["accountant"], second["clip_norm"]) == ("example", "pld", 0.8)
  assert ledger_field(second) == {"unit": "example", "epsilon": direct(40, 2), "delta": 1e-5,
                                  "noise_multiplier": 1.5, "clip": 0.8, "accountant": "pld"}
  assert ledger_field(None) is None


def test_client_level_clip_in_use_and_accountant_kind():
  meter = PrivacyMeter(A.ClientAccountant(3, 0.7, 1e-5), "client", 1e-5, 0.7, 0.1, NAMES)
  assert meter.clip_in_use({"momentum": jnp.zeros(2)}) == np.float32(0.1)  # fixed clipping
  clip = meter.clip_in_use({"privacy": {"clip_norm": jnp.asarray(0.37, jnp.float32)}})
  assert clip == np.float32(0.37)
  entry = meter.after_round(NAMES, clip)
  assert entry["clip_norm"] == clip and entry["accountant"] == "pld"
  assert entry["epsilon"] == {"federation": A.epsilon(A.dpa.dp_event.GaussianDpEvent(0.7), 1,
                                                      1e-5)}
  assert entry["unit"] == "client-level (one hospital)" and "guarantee" not in entry


def test_seeded_noise_is_labelled_in_the_record_and_the_block():
  acc = A.ExampleAccountant(NAMES, [40, 80, 80], 4, 12, 2, 1.5, 1e-5)
  meter = PrivacyMeter(acc, "example", 1e-5, 1.5, 0.8, NAMES, reproducible_noise=True)
  entry = meter.after_round(["a"])
  assert entry["guarantee"] == "no privacy guarantee: noise derived from the config seed"
  assert entry["unit"] == "example-level (one training record)"
  assert ledger_field(entry)["accountant"] == (
      "pld (no privacy guarantee: noise derived from the config seed)")
