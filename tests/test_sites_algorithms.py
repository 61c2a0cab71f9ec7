"""The sites mode (without the network) equals the simulation for algorithms with client state
kept at the node: SCAFFOLD's c_i (with every node restarted between rounds, so the state comes
from the node's state directory) and FedSA-LoRA's personal B."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedlora_jax.run import experiment
from tests.sites_fixtures import run_in_process, sites_config

HOSPITALS = ("cardiology", "oncology", "trauma")
pytestmark = pytest.mark.slow  # about 3 minutes each on 2 shared cores


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


def _adapter(workdir):
  return load_file(os.path.join(workdir, "adapter", "adapter_model.safetensors"))


@pytest.mark.parametrize("algorithm,local", [
    ("scaffold", {"fed.local_optimizer": "sgd", "fed.local_lr": 0.5}),  # as configs/scaffold.py
    ("fedsa_lora", {})])
def test_sites_equal_simulation_with_client_state(tmp_path, cache_dir, algorithm, local):
  over = {"fed.algorithm": algorithm, "fed.rounds": 3, "eval.every": 3, **local}
  sim = experiment.run(sites_config(str(tmp_path / "sim"), cache_dir, HOSPITALS, **over))
  restarts = []

  def restart_nodes(transport, line):  # every node restarts between rounds
    transport.restart()
    restarts.append(line)

  sites, enrolment, _ = run_in_process(
      sites_config(str(tmp_path / "sites"), cache_dir, HOSPITALS, **over),
      after_round=restart_nodes)
  assert len(restarts) == 4  # rounds 0..3
  a, b = _adapter(tmp_path / "sim"), _adapter(tmp_path / "sites")
  for name in a:
    np.testing.assert_allclose(b[name], a[name], atol=1e-5, err_msg=name)
  for h in HOSPITALS:  # personal models for FedSA-LoRA: evaluated at the node
    assert abs(sites["accuracy"][h] - sim["accuracy"][h]) <= 1 / 16 + 1e-9, h
    committed = sorted(os.listdir(os.path.join(enrolment.nodes[h].state_dir, "client_state")))
    assert committed == [f"committed_{r:06d}.npz" for r in (1, 2, 3)]
  records = [json.loads(l) for l in open(tmp_path / "sites" / "metrics.jsonl")]
  assert [r["ledger"].get("accepted") for r in records[1:]] == [3, 3, 3]
