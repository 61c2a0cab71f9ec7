"""The sites mode (without the network) equals the simulation for algorithms with client state
kept at the node: SCAFFOLD's c_i (with every node restarted between rounds, so the state comes
from the node's state directory), FedSA-LoRA's personal B, and FedEx-LoRA's residuals folded
into the base (sent to every node); the personal adapters the nodes export (FedSA-LoRA, local)
equal the simulation's."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from fedlora_jax import models
from fedlora_jax.run import experiment
from fedlora_jax.sites import job
from fedlora_jax.sites.hospital import Hospital
from tests.sites_fixtures import (check_folded_base, client_state_files, run_in_process,
                                  sites_config)

HOSPITALS = ("cardiology", "oncology", "trauma")
pytestmark = pytest.mark.slow  # about 3 minutes each on 2 shared cores


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


def _adapter(workdir):
  return load_file(os.path.join(workdir, "adapter", "adapter_model.safetensors"))


@pytest.mark.parametrize("algorithm,local", [
    ("scaffold", {"fed.local_optimizer": "sgd", "fed.local_lr": 0.5}),  # as configs/scaffold.py
    ("fedsa_lora", {}), ("fedex_lora", {})])
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
    committed = client_state_files(enrolment.nodes[h].state_dir)
    assert committed == [f"committed_{r:06d}.npz" for r in (1, 2, 3)]
  records = [json.loads(l) for l in open(tmp_path / "sites" / "metrics.jsonl")]
  assert [r["ledger"].get("accepted") for r in records[1:]] == [3, 3, 3]
  if algorithm == "fedsa_lora":
    _check_personal_adapters(tmp_path / "sim", sites, enrolment, HOSPITALS)
  if algorithm == "fedex_lora":  # the residuals folded into the base reached every node
    check_folded_base(tmp_path / "sim", tmp_path / "sites",
                       enrolment.nodes[HOSPITALS[0]].base_model)


def _check_personal_adapters(sim_dir, sites, enrolment, hospitals):
  """Each node's exported personal adapter loads back (the project's PEFT importer) equal to
  the personal model of its committed state, and equals the simulation's export for it."""
  cfg = job.config_from_json(open(enrolment.job_config).read())
  for h in hospitals:
    node = enrolment.nodes[h]
    hospital = Hospital(node, cfg)
    global_lora = models.load_peft_adapter(os.path.dirname(sites["adapter"]), hospital.lora_like)
    state = hospital.client_state(cfg.fed.rounds + 1, global_lora)
    expected = hospital.algorithm.personal_lora(global_lora, state)
    loaded = models.load_peft_adapter(Hospital.personal_adapter_dir(node), hospital.lora_like)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(loaded),
                                 jax.tree.leaves(expected)):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"{h} {path}")
    config = json.load(open(os.path.join(Hospital.personal_adapter_dir(node),
                                         "adapter_config.json")))
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == node.base_model
    a = load_file(os.path.join(sim_dir, "adapters", h, "adapter_model.safetensors"))
    b = load_file(os.path.join(Hospital.personal_adapter_dir(node), "adapter_model.safetensors"))
    assert sorted(a) == sorted(b)
    for name in a:
      np.testing.assert_allclose(b[name], a[name], atol=1e-5, err_msg=f"{h} {name}")


def test_local_training_exports_each_nodes_personal_adapter(tmp_path, cache_dir):
  over = {"fed.algorithm": "local", "fed.rounds": 1, "eval.every": 1}
  experiment.run(sites_config(str(tmp_path / "sim"), cache_dir, HOSPITALS[:2], **over))
  sites, enrolment, _ = run_in_process(sites_config(str(tmp_path / "sites"), cache_dir,
                                                    HOSPITALS[:2], **over))
  _check_personal_adapters(tmp_path / "sim", sites, enrolment, HOSPITALS[:2])


@pytest.mark.parametrize("rule", [{"fed.robust_rule": "median"},
                                  {"fed.robust_norm_bound": 1e-3}])  # below every update's norm
def test_sites_robust_rule_and_norm_bound_equal_simulation(tmp_path, cache_dir, rule):
  """The server runs the config's robust rule / norm bound in the simulation's own server step:
  the global adapter equals the simulation's within 1e-5 (and differs from plain FedAvg's)."""
  over = {"fed.rounds": 2, "eval.every": 2, **rule}
  sim_dir, sites_dir, plain_dir = (str(tmp_path / n) for n in ("sim", "sites", "plain"))
  experiment.run(sites_config(sim_dir, cache_dir, HOSPITALS, **over))
  run_in_process(sites_config(sites_dir, cache_dir, HOSPITALS, **over))
  run_in_process(sites_config(plain_dir, cache_dir, HOSPITALS, **{"fed.rounds": 2,
                                                                  "eval.every": 2}))
  a, b = _adapter(sim_dir), _adapter(sites_dir)
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_allclose(b[name], a[name], atol=1e-5, err_msg=name)
  plain = _adapter(plain_dir)
  assert max(float(np.abs(b[n] - plain[n]).max()) for n in b) > 1e-4  # the rule acted
