"""The round under `jax.distributed`: 2 processes on localhost, 2 CPU devices each, gloo
collectives, a global `clients` mesh of 4 devices. One FedAvg round of 4 clients must give the
single-process result (computed here, on one device), each process holding only its own clients'
rows of the per-client outputs.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from fedlora_jax import federated as F
from fedlora_jax.federated import distributed
from tests.fed_fixtures import tiny_model
from tests.sharded_worker import MP_CLIENTS, flat_leaves, mp_round

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PROCESSES = 2
PER_PROCESS = MP_CLIENTS // NUM_PROCESSES  # clients: one per device, 2 devices per process


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.multidevice
def test_two_process_round_equals_single_process_round(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"))
  coordinator = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.sharded_worker", "process", coordinator,
       str(NUM_PROCESSES), str(i), str(tmp_path)],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(NUM_PROCESSES)]
  try:
    # The reference meanwhile: the same round, unsharded, in this (single-device) process.
    graphdef, base, lora = tiny_model()
    start = flat_leaves("global_lora", lora)
    state, metrics = mp_round(F, graphdef, base, lora, sharding=None)
    expected = flat_leaves("global_lora", state["global_lora"])
    expected_loss = np.asarray(metrics["loss"])
    logs = [p.communicate(timeout=180)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-5000:]

  for i in range(NUM_PROCESSES):
    got = dict(np.load(tmp_path / f"process_{i}.npz"))
    assert int(got["process_index"]) == i
    assert int(got["process_count"]) == NUM_PROCESSES
    assert int(got["device_count"]) == 4 and int(got["local_device_count"]) == 2
    # Every process ends with the whole (replicated) global adapter, equal to the reference.
    assert {k for k in got if k.startswith("global_lora/")} == expected.keys()
    for k, v in expected.items():
      np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    # Per-client losses: process i holds only its own devices' clients, and they match too ...
    mine = np.arange(i * PER_PROCESS, (i + 1) * PER_PROCESS)
    np.testing.assert_array_equal(got["loss_rows"], mine)
    np.testing.assert_allclose(got["loss_local"], expected_loss[mine], rtol=1e-5)
    # ... and `ClientSharding.put` reshards the global array to replicated across processes.
    np.testing.assert_allclose(got["loss_all"], expected_loss, rtol=1e-5)
    # Meshes that leave a process out, or put a model row across hosts, are refused.
    assert str(got["error_one_process"]).startswith(
        "ValueError mesh clients=1 x model=2 spreads unevenly over the 2 processes "
        "(2 local devices each): mesh devices per process {0: 2}"), got["error_one_process"]
    assert str(got["error_model_across_hosts"]) == (
        "ValueError mesh clients=1 x model=4: model=4 must divide the 2 mesh devices of each "
        "process, so that a model row stays inside one host")
  # The round did move the adapter.
  assert max(np.abs(expected[k] - start[k]).max() for k in start) > 1e-4


def test_initialize_rejects_bad_arguments():
  with pytest.raises(ValueError, match="host:port"):
    distributed.initialize("localhost", 2, 0)
  with pytest.raises(ValueError, match="host:port"):
    distributed.initialize("localhost:99999", 2, 0)
  with pytest.raises(ValueError, match="num_processes"):
    distributed.initialize("localhost:1234", 0, 0)
  with pytest.raises(ValueError, match=r"process_id must be an int in \[0, 2\)"):
    distributed.initialize("localhost:1234", 2, 2)


def test_global_mesh_single_process():
  mesh = distributed.global_mesh()
  assert mesh.axis_names == ("clients", "model") and mesh.devices.shape == (1, 1)
  with pytest.raises(ValueError, match="has 1 devices"):
    distributed.global_mesh(2)
  with pytest.raises(ValueError, match=r"clients=1 x model=2"):
    distributed.global_mesh(1, 2)


def test_initialize_after_jax_started_is_a_clear_error():
  import jax  # pylint: disable=import-outside-toplevel
  jax.devices()  # the backend is up: too late to join a distributed job
  with pytest.raises(RuntimeError, match="process 0 of 2 .* before any JAX computation"):
    distributed.initialize(f"127.0.0.1:{_free_port()}", 2, 0)
  assert not jax.distributed.is_initialized()
