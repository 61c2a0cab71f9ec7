"""Robust rules, attacks and both DP levels give the same rounds sharded over 4 forced CPU
devices as on one device (the flattened-update aggregation runs inside the sharded program)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.safeguards_worker import CLIENTS, SETTINGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp("safeguards")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      f"--xla_force_host_platform_device_count={CLIENTS} --xla_backend_optimization_level=0"))
  proc = subprocess.run([sys.executable, "-m", "tests.safeguards_worker", str(out)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return dict(np.load(out / "results.npz"))


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.parametrize("name", SETTINGS)
def test_sharded_round_equals_single_device_round(results, name):
  single = {k.split("/", 2)[2]: v for k, v in results.items() if k.startswith(f"{name}/single/")}
  assert single["moved"] > 0  # the rounds changed the adapter
  for key, value in single.items():
    np.testing.assert_allclose(results[f"{name}/sharded/{key}"], value, rtol=1e-5, atol=1e-6,
                               err_msg=key)
