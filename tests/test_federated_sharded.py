"""The round sharded over 8 forced CPU devices equals the single-device round.

JAX fixes its device count at start-up, so the rounds run in a subprocess
(`tests/sharded_worker.py sharded`) with 8 host devices; it writes every leaf of the final state and
metrics of both runs, and a report of the output shardings, which this test checks.
"""

import numpy as np
import pytest

from tests.sharded_worker import SHARDED_ALGORITHMS, SHARDED_CLIENTS, spawn


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
  return spawn("sharded", tmp_path_factory.mktemp("sharded"), devices=SHARDED_CLIENTS)


@pytest.mark.multidevice
@pytest.mark.parametrize("name", SHARDED_ALGORITHMS)
def test_sharded_round_equals_single_device_round(sharded_run, name):
  results, report = sharded_run
  assert report["device_count"] == 8
  single = {k[len(f"{name}/single/"):]: v for k, v in results.items()
            if k.startswith(f"{name}/single/")}
  sharded = {k[len(f"{name}/sharded/"):]: v for k, v in results.items()
             if k.startswith(f"{name}/sharded/")}
  assert single.keys() == sharded.keys()
  groups = {k.split("/")[0] for k in single}
  assert {"global_lora", "metrics0", "metrics1"} <= groups
  if name == "scaffold":  # per-client control variates (and the server's c) are compared too
    assert any(k.startswith("client_states/['c']") for k in single)
    assert any(k.startswith("server_state/['c']") for k in single)
  for k in single:
    a, b = single[k], sharded[k]
    assert a.shape == b.shape, k
    if a.dtype == bool:
      np.testing.assert_array_equal(a, b, err_msg=k)
    else:  # SCAFFOLD's c scales updates by 1 / (K lr) = 50: a looser absolute tolerance
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 if "['c']" in k else 1e-6,
                                 err_msg=k)
  # The rounds did something: the adapter moved, and every client trained and counted.
  np.testing.assert_array_equal(single["metrics1/['valid']"], [True] * 8)
  counts = np.arange(1, 9) * 10.0
  np.testing.assert_allclose(sharded["metrics0/['weights']"], counts / counts.sum(), rtol=1e-6)
  assert np.isfinite(sharded["metrics1/['loss']"]).all()


@pytest.mark.multidevice
@pytest.mark.parametrize("name", SHARDED_ALGORITHMS)
def test_sharded_outputs_global_replicated_and_clients_split(sharded_run, name):
  _, report = sharded_run
  out = report[name]
  assert out["global_lora"]
  for x in out["global_lora"]:  # one whole copy on each of the 8 devices
    assert x["fully_replicated"] and x["num_devices"] == 8, x
    assert x["shard_shapes"] == [x["shape"]], x
  aggregated = out["metrics"].pop("aggregated")  # the round's one flag, on every device
  assert aggregated["fully_replicated"] and aggregated["shape"] == [], aggregated
  by_client = list(out["metrics"].values()) + out["client_states"]
  if name == "scaffold":
    assert len(out["client_states"]) == len(out["global_lora"])
  for x in by_client:  # client i's row lives on device i only
    assert x["spec"] == "P('clients',)" and not x["fully_replicated"], x
    assert x["num_devices"] == 8 and x["shape"][0] == 8, x
    assert x["shard_shapes"] == [[1] + x["shape"][1:]], x
    assert x["rows"] == [[i, i + 1] for i in range(8)], x


@pytest.mark.multidevice
def test_base_is_held_once_per_device_not_split_per_client(sharded_run):
  _, report = sharded_run
  assert report["base"]
  for x in report["base"]:
    assert x["fully_replicated"] and x["num_devices"] == 8, x
    assert x["shard_shapes"] == [x["shape"]], x  # each device holds the full leaf
  assert all(report["compiled_base_replicated"])
  # Each device's arguments: one base plus its client's small LoRA state and batches.
  base_bytes = report["base_bytes"]
  assert base_bytes <= report["per_device_argument_bytes"] < 1.5 * base_bytes, report


@pytest.mark.multidevice
def test_six_clients_on_eight_devices_are_padded_to_the_one_device_result(sharded_run):
  results, _ = sharded_run
  single = {k[len("padded/single/"):]: v for k, v in results.items()
            if k.startswith("padded/single/")}
  sharded = {k[len("padded/sharded/"):]: v for k, v in results.items()
             if k.startswith("padded/sharded/")}
  assert single and single.keys() == sharded.keys()
  assert sharded["metrics/['loss']"].shape == (6, 2)  # the real clients only
  for key, value in single.items():
    np.testing.assert_allclose(sharded[key], value, atol=1e-5, err_msg=key)
