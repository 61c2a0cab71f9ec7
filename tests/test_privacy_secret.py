"""DP secrets: from the OS, private (0600 in a 0700 dir), stable across loads (exact resume),
different per party, and per run through the run nonce even with a shared keystore; never printed
or pickled; a resume without its secret is refused; the seeded research mode is the only one a
config can reproduce; sites mode refuses DP settings the simulation refuses and seeded noise."""

import os
import pickle
import stat

import numpy as np
import pytest

from fedlora_jax.privacy.secret import DpSecret, SecretError
from fedlora_jax.run.configs import load_config_file
from fedlora_jax.run.dp_keys import DpKeys
from fedlora_jax.sites import job
from tests.run_fixtures import DEFAULT, tiny_config


def test_secret_is_created_private_and_reloaded_identically(tmp_path):
  d = tmp_path / "keys" / "clinic"
  first = DpSecret.load_or_create(d)
  assert stat.S_IMODE(os.stat(d / "dp_secret").st_mode) == 0o600
  assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
  again = DpSecret.load_or_create(d)
  np.testing.assert_array_equal(first.jax_key("noise", 3), again.jax_key("noise", 3))
  assert first.numpy_rng("sampling", 3).random() == again.numpy_rng("sampling", 3).random()
  other = DpSecret.load_or_create(tmp_path / "keys" / "other")
  assert not np.array_equal(first.jax_key("noise", 3), other.jax_key("noise", 3))
  assert not np.array_equal(first.jax_key("noise", 3), first.jax_key("noise", 4))
  assert "held" in repr(first) and (d / "dp_secret").read_text().strip() not in repr(first)
  with pytest.raises(TypeError, match="never serialised"):
    pickle.dumps(first)


def test_unsafe_or_malformed_secret_files_are_refused(tmp_path):
  d = tmp_path / "s"
  DpSecret.load_or_create(d)
  os.chmod(d / "dp_secret", 0o644)
  with pytest.raises(SecretError, match="readable by others"):
    DpSecret.load_or_create(d)
  os.chmod(d / "dp_secret", 0o600)
  (d / "dp_secret").write_text("abcd")
  with pytest.raises(SecretError, match="holds 2 bytes"):
    DpSecret.load_or_create(d)


def test_seeded_secrets_are_reproducible_and_labelled():
  a, b = DpSecret.reproducible(0, "clinic"), DpSecret.reproducible(0, "clinic")
  np.testing.assert_array_equal(a.jax_key("n", 1), b.jax_key("n", 1))
  assert a.reproducible_from_seed and "no privacy" in repr(a)
  assert not np.array_equal(a.jax_key("n", 1), DpSecret.reproducible(1, "clinic").jax_key("n", 1))


@pytest.mark.parametrize("overrides,message", [
    ({"privacy.level": "example", "privacy.reproducible_noise": True}, "sites mode refuses it"),
    ({"attack.kind": "sign_flip"}, "attack.kind='sign_flip' is a simulation experiment"),
    ({"privacy.level": "client", "privacy.noise_multiplier": 1.0, "fed.algorithm": "scaffold"},
     "'scaffold' with privacy.level='client' is refused: its per-client control variates"),
    ({"privacy.level": "example", "privacy.noise_multiplier": 0.0,
      "privacy.target_epsilon": 0.0}, "needs privacy.noise_multiplier > 0"),
    ({"privacy.adaptive_clipping": True, "privacy.level": "example",
      "privacy.noise_multiplier": 1.0}, "adaptive_clipping applies to privacy.level='client'"),
])
def test_sites_mode_refuses_safeguards_it_cannot_run(overrides, message):
  """Sites mode refuses in one line what the simulation refuses, and the seeded noise and
  attacks it has no place for; it runs both DP levels (configs/dp_sgd.py, dp_fedavg.py)."""
  cfg = load_config_file(DEFAULT)
  for field, value in overrides.items():
    section, leaf = field.split(".")
    cfg[section][leaf] = value
  with pytest.raises(ValueError, match=message):
    job.check_job(cfg)
  for name in ("default.py", "dp_sgd.py", "dp_fedavg.py"):
    job.check_job(load_config_file(os.path.join(os.path.dirname(DEFAULT), name)))


def test_runs_sharing_a_keystore_get_other_keys_and_a_resume_needs_its_secret(tmp_path):
  cfg = tiny_config(str(tmp_path / "w"), str(tmp_path / "c"),
                    **{"privacy.level": "example", "ledger.keystores": str(tmp_path / "keys")})
  names = ["north", "south"]
  first = DpKeys.open(cfg, cfg.workdir, names, [0, 1], run_nonce="aa", resuming=False)
  second = DpKeys.open(cfg, cfg.workdir, names, [0, 1], run_nonce="bb", resuming=False)
  again = DpKeys.open(cfg, cfg.workdir, names, [0, 1], run_nonce="aa", resuming=True)
  assert not np.array_equal(first.noise_key(0, 0), second.noise_key(0, 0))
  np.testing.assert_array_equal(first.noise_key(0, 3), again.noise_key(0, 3))
  assert (first.sampling_rngs([1], 2)[0].random() != second.sampling_rngs([1], 2)[0].random())
  with pytest.raises(ValueError, match="not held by this process"):
    DpKeys.open(cfg, cfg.workdir, names, [0], run_nonce="aa", resuming=True).noise_key(1, 0)
  os.remove(tmp_path / "keys" / "south" / "dp_secret")
  with pytest.raises(SecretError, match="dp_secret is missing"):
    DpKeys.open(cfg, cfg.workdir, names, [0, 1], run_nonce="aa", resuming=True)
