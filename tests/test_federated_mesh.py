"""The `clients x model` mesh: logical axes, the rules table, client groups, and a round on a
`clients=2 x model=4` mesh of 8 forced CPU devices (in a subprocess, `tests/sharded_worker.py
mesh2d`) that equals the unsharded round while each device holds a quarter of the base.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from fedlora_jax import federated as F
from fedlora_jax import models
from fedlora_jax.federated import distributed
from fedlora_jax.federated.sharding import in_client_groups
from tests.fed_fixtures import tiny_model
from tests.sharded_worker import MESH_CLIENTS, MESH_SHAPE, spawn

def test_every_base_param_declares_one_logical_name_per_axis():
  graphdef, base, _ = tiny_model()
  axes = models.base_logical_axes(graphdef)
  flat_axes = jax.tree.leaves_with_path(axes, is_leaf=lambda x: isinstance(x, tuple))
  flat_base = jax.tree.leaves_with_path(base)
  assert [p for p, _ in flat_axes] == [p for p, _ in flat_base]
  for (path, a), (_, x) in zip(flat_axes, flat_base):
    assert len(a) == x.ndim, (jax.tree_util.keystr(path), a, x.shape)
  layer = axes["model"]["layers"][0]
  assert axes["model"]["embed_tokens"]["weight"] == ("vocab", "embed")
  assert layer["self_attn"]["q_proj"]["weight"] == ("heads", "embed")  # HF [out, in]
  assert layer["self_attn"]["k_proj"]["weight"] == ("kv_heads", "embed")
  assert layer["self_attn"]["o_proj"]["weight"] == ("embed", "heads")
  assert layer["mlp"]["down_proj"]["weight"] == ("embed", "mlp")
  assert layer["input_layernorm"]["weight"] == ("embed",)


def test_rules_table_maps_logical_axes_to_the_model_axis():
  rules = F.AxisRules()
  assert rules.spec(("heads", "embed")) == P("model", None)  # column parallel
  assert rules.spec(("embed", "mlp")) == P(None, "model")  # row parallel
  assert rules.spec(("vocab", "embed")) == P("model", None)
  assert rules.spec(("head_dim",)) == P(None)
  assert F.AxisRules(vocab=None).spec(("vocab", "embed")) == P(None, None)
  with pytest.raises(ValueError, match=r"logical axes \['experts'\] have no rule"):
    rules.spec(("experts", "embed"))


def test_mesh_shape_infers_zero_sizes():
  assert F.mesh_shape(0, 0, 8) == (8, 1)
  assert F.mesh_shape(0, 4, 8) == (2, 4)
  assert F.mesh_shape(2, 0, 8) == (2, 1)
  with pytest.raises(ValueError, match="mesh model=3 does not divide the 8 devices"):
    F.mesh_shape(0, 3, 8)


def test_single_process_mesh_axes_and_errors():
  mesh = distributed.global_mesh()
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match="mesh clients=2 x model=1 needs 2 devices, but the job "
                                       "has 1 devices"):
    distributed.global_mesh(clients=2)
  with pytest.raises(ValueError, match="mesh model=2 does not divide the 1 devices"):
    distributed.global_mesh(model=2)


def test_client_groups_equal_all_clients_at_once():
  """Groups of 2 clients from each of 2 shards: the same per-client results, in client order."""
  x_c = jnp.arange(8 * 3, dtype=jnp.float32).reshape(8, 3)
  seen = []

  def fn(xs):
    seen.append(xs[0].shape)
    return xs[0] * 2.0 + xs[1][:, None], jnp.sum(xs[0], axis=1)

  xs = (x_c, jnp.arange(8.0))
  want = fn(xs)
  got = in_client_groups(fn, xs, shards=2, group_size=2)
  assert seen[-1] == (4, 3)  # two steps of 2 shards x 2 clients
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  # Step 0 takes clients 0, 1 (shard 0) and 4, 5 (shard 1); step 1 clients 2, 3, 6, 7.
  group_min = in_client_groups(lambda x: jnp.broadcast_to(jnp.min(x), x.shape), jnp.arange(8),
                               shards=2, group_size=2)
  np.testing.assert_array_equal(group_min, [0, 0, 2, 2, 0, 0, 2, 2])
  assert in_client_groups(fn, xs, shards=2, group_size=0)[1].shape == (8,)
  with pytest.raises(ValueError, match="client_group_size=3 must divide the 4 clients of each "
                                       "of the 2 client shards"):
    in_client_groups(fn, xs, shards=2, group_size=3)


@pytest.fixture(scope="module")
def mesh2d_run(tmp_path_factory):
  return spawn("mesh2d", tmp_path_factory.mktemp("mesh2d"), timeout=480)


def _run(results, name, mode):
  prefix = f"{name}/{mode}/"
  return {k[len(prefix):]: v for k, v in results.items() if k.startswith(prefix)}


@pytest.mark.multidevice
@pytest.mark.parametrize("name,mode", [("fedavg", "sharded"), ("fedavg", "sharded_groups"),
                                       ("scaffold", "sharded_groups")])
def test_clients_by_model_mesh_round_equals_unsharded_round(mesh2d_run, name, mode):
  results, report = mesh2d_run
  assert report["mesh"] == {"clients": MESH_SHAPE[0], "model": MESH_SHAPE[1]}
  single, sharded = _run(results, name, "single"), _run(results, name, mode)
  assert single.keys() == sharded.keys()
  assert {"global_lora", "metrics0", "metrics1"} <= {k.split("/")[0] for k in single}
  if name == "scaffold":
    assert any(k.startswith("client_states/['c']") for k in single)
  for k in single:
    assert single[k].shape == sharded[k].shape, k
    np.testing.assert_allclose(sharded[k], single[k], rtol=0, atol=1e-5, err_msg=k)
  np.testing.assert_array_equal(single["metrics1/['valid']"], [True] * MESH_CLIENTS)
  start = _run(results, "initial", "lora")  # the rounds moved the adapter
  assert max(np.abs(single[f"global_lora/{k}"] - v).max() for k, v in start.items()) > 1e-4


@pytest.mark.multidevice
def test_groups_equal_no_groups_on_the_mesh(mesh2d_run):
  results, _ = mesh2d_run
  plain, grouped = _run(results, "fedavg", "sharded"), _run(results, "fedavg", "sharded_groups")
  for k in plain:
    np.testing.assert_allclose(grouped[k], plain[k], rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.multidevice
def test_each_device_holds_a_quarter_of_the_base(mesh2d_run):
  _, report = mesh2d_run
  model = MESH_SHAPE[1]
  assert set(report["compiled_base_specs"]) == {"P('model', None)", "P(None, 'model')",
                                                "P(None,)"}
  for x in report["base"]:
    if "model" in x["spec"]:  # split 4 ways along one axis (each quarter on 2 devices)
      assert np.prod(x["shard_shapes"][0]) * model == np.prod(x["shape"]), x
    else:
      assert x["fully_replicated"] and len(x["shape"]) == 1, x  # only norms stay whole
  base_part = report["per_device_argument_bytes"] - report["other_bytes_per_device"]
  assert abs(base_part - report["base_bytes"] / model) < 0.05 * report["base_bytes"] / model, report


@pytest.mark.multidevice
def test_unplaceable_mesh_shapes_are_clear_errors(mesh2d_run):
  _, report = mesh2d_run
  errors = report["errors"]
  assert errors["too_many"] == [
      "ValueError", "mesh clients=3 x model=3 needs 9 devices, but the job has 8 devices"]
  assert errors["wrong_devices"] == ["ValueError", "mesh clients=2 x model=4 needs 8 devices, got 6"]
  assert errors["zero"] == ["ValueError", "mesh clients=0 x model=4: both axis sizes must be >= 1"]
  kind, message = errors["indivisible_base"]
  assert kind == "ValueError" and "['mlp']['down_proj']['weight'] of shape (32, 50) cannot be " \
      "split as P(None, 'model') over the mesh {'clients': 2, 'model': 4}" in message
  assert errors["groups"] == ["ValueError", "client_group_size=2 must divide the 3 clients of "
                              "each of the 2 client shards (6 clients)"]


@pytest.mark.multidevice
def test_layer_scan_on_the_mesh_equals_the_layer_loop_on_one_device(mesh2d_run):
  results, report = mesh2d_run
  loop, scan = _run(results, "scan", "loop_single"), _run(results, "scan", "scan_sharded")
  assert loop.keys() == scan.keys() and any(k.startswith("global_lora/") for k in loop)
  assert any("[1]" in k for k in loop)  # both layers' adapters are compared
  for k in loop:
    np.testing.assert_allclose(scan[k], loop[k], rtol=0, atol=1e-5, err_msg=k)
  q = report["scan_q_proj"]  # stacked [L, out, in]: layers replicated, q's heads split 4 ways
  assert q["shape"] == [2, 64, 64] and q["spec"] == "P(None, 'model', None)", q
  assert q["shard_shapes"][0] == [2, 16, 64], q
