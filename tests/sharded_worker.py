"""Subprocess workers for the multi-device tests (JAX's device count is fixed at start-up).

    python -m tests.sharded_worker sharded OUT_DIR
        with XLA_FLAGS=--xla_force_host_platform_device_count=8: two rounds of 8 clients, sharded
        over a `clients` mesh of 8 devices and unsharded, for FedAvg and SCAFFOLD;
        writes OUT_DIR/sharded.npz (leaves of both runs) and OUT_DIR/sharded.json (shardings).
    python -m tests.sharded_worker mesh2d OUT_DIR
        with 8 devices: two rounds of MESH_CLIENTS clients unsharded and on a `clients=2 x
        model=4` mesh (the base split over `model`) with client groups, for FedAvg and SCAFFOLD,
        and for FedAvg also without groups; the compiled program's per-device argument bytes;
        mesh shapes that cannot be placed. Writes OUT_DIR/mesh2d.npz and OUT_DIR/mesh2d.json.
    python -m tests.sharded_worker quant OUT_DIR
        with 8 devices: two FedAvg rounds of MESH_CLIENTS clients over an NF4-quantized base on
        the `clients=2 x model=4` mesh (layer loop, and the layer scan), and over the same
        weights dequantized to float on one device; the placement of codes and scales and the
        per-device argument bytes. Writes OUT_DIR/quant.npz and OUT_DIR/quant.json.
    python -m tests.sharded_worker process COORDINATOR NUM_PROCESSES PROCESS_ID OUT_DIR
        one process of a `jax.distributed` run (gloo CPU collectives): one FedAvg round of
        MP_CLIENTS clients on the global mesh; writes OUT_DIR/process_{id}.npz.

The parent test sets XLA_FLAGS and JAX_PLATFORMS before this module imports JAX.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

K = 2  # local steps
SHARDED_CLIENTS = 8
SHARDED_ALGORITHMS = ("fedavg", "scaffold")
MP_CLIENTS = 4
MP_COUNTS = np.array([5, 10, 20, 40])
MESH_CLIENTS = 4
MESH_SHAPE = (2, 4)  # clients x model
MESH_GROUP = 1  # client_group_size of the grouped runs (2 clients per shard: 2 groups)


def spawn(mode: str, out_dir, devices: int = 8, timeout: int = 240) -> tuple[dict, dict]:
  """Runs `python -m tests.sharded_worker MODE OUT_DIR` with `devices` forced CPU devices and
  returns its (arrays of OUT_DIR/MODE.npz, OUT_DIR/MODE.json)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"))
  proc = subprocess.run([sys.executable, "-m", "tests.sharded_worker", mode, str(out_dir)],
                        cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  with open(os.path.join(out_dir, f"{mode}.json")) as f:
    report = json.load(f)
  return dict(np.load(os.path.join(out_dir, f"{mode}.npz"))), report


def _configure_jax():
  import jax  # pylint: disable=import-outside-toplevel
  # Same numerics as tests/conftest.py.
  jax.config.update("jax_default_matmul_precision", "highest")
  jax.config.update("jax_threefry_partitionable", True)
  return jax


def flat_leaves(prefix: str, tree) -> dict[str, np.ndarray]:
  """{"prefix/<key path>": leaf as numpy} (process-local leaves only)."""
  import jax  # pylint: disable=import-outside-toplevel
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {f"{prefix}/{jax.tree_util.keystr(p)}": np.asarray(x) for p, x in flat}


def _describe(x) -> dict:
  """What the test asserts about an output array's placement."""
  shards = x.addressable_shards
  return {
      "shape": list(x.shape),
      "spec": str(x.sharding.spec),
      "fully_replicated": bool(x.sharding.is_fully_replicated),
      "num_devices": len({s.device.id for s in shards}),
      "shard_shapes": sorted(list(t) for t in {tuple(s.data.shape) for s in shards}),
      # [start, stop) of axis 0 held by each device
      "rows": sorted(list(s.index[0].indices(x.shape[0])[:2]) for s in shards) if x.ndim else [],
  }


def fed_round_inputs(num_clients: int, rnd: int):
  """(batches, client_ids, counts) of round `rnd`: all clients, in a round-dependent order."""
  from tests.fed_fixtures import client_batches  # pylint: disable=import-outside-toplevel
  ids = np.arange(num_clients) if rnd == 0 else np.random.default_rng(rnd).permutation(num_clients)
  counts = np.arange(1, num_clients + 1, dtype=np.float32)[ids] * 10
  return client_batches(num_clients, K, seed=rnd), ids, counts


def run_sharded(out_dir: str) -> None:
  jax = _configure_jax()
  from fedlora_jax import federated as F  # pylint: disable=import-outside-toplevel
  from tests.fed_fixtures import client_batches, tiny_model  # pylint: disable=import-outside-toplevel

  n = SHARDED_CLIENTS
  assert jax.device_count() == n, jax.devices()
  graphdef, base, lora = tiny_model()
  sharding = F.ClientSharding(F.make_mesh(n))
  tr = F.LocalTraining(local_steps=K, optimizer="sgd", learning_rate=1e-2)
  results: dict[str, np.ndarray] = {}
  report: dict = {"device_count": jax.device_count()}
  for name in SHARDED_ALGORITHMS:
    alg = F.make_algorithm(name, local_lr=1e-2)
    for mode in ("single", "sharded"):
      fr = F.FederatedRound(graphdef, alg, tr, num_clients=n,
                            sharding=sharding if mode == "sharded" else None)
      state, base_m = fr.place(F.init_state(alg, lora, n, seed=0), base)
      metrics = []
      for rnd in range(2):
        batches, ids, counts = fed_round_inputs(n, rnd)
        state, base_m, m = fr(state, base_m, batches, ids, counts)
        metrics.append(m)
      tag = f"{name}/{mode}"
      results.update(flat_leaves(f"{tag}/global_lora", state["global_lora"]))
      results.update(flat_leaves(f"{tag}/server_state", state["server_state"]))
      results.update(flat_leaves(f"{tag}/client_states", state["client_states"]))
      for rnd, m in enumerate(metrics):
        results.update(flat_leaves(f"{tag}/metrics{rnd}", m))
      if mode != "sharded":
        continue
      report[name] = {
          "global_lora": [_describe(x) for x in jax.tree.leaves(state["global_lora"])],
          "client_states": [_describe(x) for x in jax.tree.leaves(state["client_states"])],
          "metrics": {k: _describe(v) for k, v in metrics[-1].items()},
      }
      if name == "fedavg":
        report["base"] = [_describe(x) for x in jax.tree.leaves(base_m)]
        report["base_bytes"] = int(sum(x.nbytes for x in jax.tree.leaves(base)))
        # The compiled round takes the base replicated (whole on every device) ...
        batches, ids, counts = fed_round_inputs(n, 0)
        compiled = fr.lower(state, base_m, batches, ids, counts).compile()
        in_base = jax.tree.leaves(compiled.input_shardings[0][1])
        report["compiled_base_replicated"] = [bool(s.is_fully_replicated) for s in in_base]
        # ... and each device's arguments hold it once (base + small LoRA state and batches).
        mem = compiled.memory_analysis()
        report["per_device_argument_bytes"] = int(mem.argument_size_in_bytes)
        # Six clients on eight devices: padded with two dummy clients, same result as 1 device.
        for pmode in ("single", "sharded"):
          pfr = F.FederatedRound(graphdef, alg, tr, num_clients=6,
                                 sharding=sharding if pmode == "sharded" else None)
          pstate, pbase = pfr.place(F.init_state(alg, lora, 6, seed=0), base)
          batches, ids, counts = fed_round_inputs(n, 0)
          pstate, _, pm = pfr(pstate, pbase, {k: v[:6] for k, v in batches.items()},
                              np.arange(6), counts[:6])
          results.update(flat_leaves(f"padded/{pmode}/global_lora", pstate["global_lora"]))
          results.update(flat_leaves(f"padded/{pmode}/metrics", pm))
  np.savez(os.path.join(out_dir, "sharded.npz"), **results)
  with open(os.path.join(out_dir, "sharded.json"), "w") as f:
    json.dump(report, f)


def mesh_model():
  """A small model whose base dominates the round's arguments, every split axis divisible by 4."""
  from fedlora_jax import models  # pylint: disable=import-outside-toplevel
  from tests.fed_fixtures import TINY, tiny_model  # pylint: disable=import-outside-toplevel
  cfg = TINY.replace(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16)
  return tiny_model(cfg, models.LoRAConfig(rank=2, alpha=4.0))


def _errors(calls) -> dict:
  """{name: [exception type, message]} of calls that are expected to raise."""
  out = {}
  for name, call in calls.items():
    try:
      call()
      out[name] = None
    except Exception as e:  # pylint: disable=broad-except
      out[name] = [type(e).__name__, str(e)]
  return out


def _place_tiny(F, tr, sharding, **cfg_overrides):
  """Places the tiny model with config overrides on `sharding`'s mesh."""
  from tests.fed_fixtures import TINY, tiny_model  # pylint: disable=import-outside-toplevel
  graphdef, base, lora = tiny_model(TINY.replace(**cfg_overrides))
  alg = F.make_algorithm("fedavg")
  fr = F.FederatedRound(graphdef, alg, tr, num_clients=2, sharding=sharding)
  return fr.place(F.init_state(alg, lora, 2, seed=0), base)


def run_mesh2d(out_dir: str) -> None:
  jax = _configure_jax()
  from fedlora_jax import federated as F  # pylint: disable=import-outside-toplevel
  from tests.fed_fixtures import client_batches  # pylint: disable=import-outside-toplevel

  n = MESH_CLIENTS
  graphdef, base, lora = mesh_model()
  sharding = F.ClientSharding(F.make_mesh(*MESH_SHAPE))
  tr = F.LocalTraining(local_steps=K, optimizer="sgd", learning_rate=1e-2)
  results: dict[str, np.ndarray] = {}
  report: dict = {"device_count": jax.device_count(), "mesh": dict(sharding.mesh.shape),
                  "base_bytes": int(sum(x.nbytes for x in jax.tree.leaves(base)))}
  results.update(flat_leaves("initial/lora", lora))
  modes = {"single": (None, 0), "sharded": (sharding, 0), "sharded_groups": (sharding, MESH_GROUP)}
  for name in SHARDED_ALGORITHMS:
    alg = F.make_algorithm(name, local_lr=1e-2)
    for mode, (sh, group) in modes.items():
      if name != "fedavg" and mode == "sharded":
        continue  # groups vs no groups once (FedAvg); the stateful algorithm with groups only
      fr = F.FederatedRound(graphdef, alg, tr, num_clients=n, sharding=sh,
                            client_group_size=group)
      state, base_m = fr.place(F.init_state(alg, lora, n, seed=0), base)
      for rnd in range(2):
        batches, ids, counts = fed_round_inputs(n, rnd)
        if rnd == 1 and mode == "sharded" and name == "fedavg":
          compiled = fr.lower(state, base_m, batches, ids, counts).compile()
          in_base = jax.tree.leaves(compiled.input_shardings[0][1])
          report["compiled_base_specs"] = sorted({str(s.spec) for s in in_base})
          report["base"] = [_describe(x) for x in jax.tree.leaves(base_m)]
          # Per device: its quarter of the base, plus its shard of everything else.
          others = (state, {k: sharding.put(v, sharding.by_client) for k, v in batches.items()})
          report["other_bytes_per_device"] = int(sum(
              x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(others))
              + ids.nbytes + counts.nbytes)
          report["per_device_argument_bytes"] = int(
              compiled.memory_analysis().argument_size_in_bytes)
        state, base_m, m = fr(state, base_m, batches, ids, counts)
        results.update(flat_leaves(f"{name}/{mode}/metrics{rnd}", m))
      for part in ("global_lora", "server_state", "client_states"):
        results.update(flat_leaves(f"{name}/{mode}/{part}", state[part]))
  _scan_on_mesh(F, sharding, tr, results, report)
  alg = F.make_algorithm("fedavg")
  report["errors"] = _errors({
      "too_many": lambda: F.make_mesh(3, 3),
      "wrong_devices": lambda: F.make_mesh(2, 4, devices=jax.devices()[:6]),
      "zero": lambda: F.make_mesh(0, 4),
      "indivisible_base": lambda: _place_tiny(F, tr, sharding, intermediate_size=50),
      "groups": lambda: F.FederatedRound(graphdef, alg, tr, num_clients=6, sharding=sharding,
                                         client_group_size=2)(
          F.init_state(alg, lora, 6, 0), base, client_batches(6, K), np.arange(6), np.ones(6)),
  })
  np.savez(os.path.join(out_dir, "mesh2d.npz"), **results)
  with open(os.path.join(out_dir, "mesh2d.json"), "w") as f:
    json.dump(report, f)


def _two_layer_loop_and_scan(**cfg_overrides):
  """A 2-layer tiny model with the layer loop: (graphdef, base, lora), and the graphdef of the
  same model with the layer scan (its params are `models.stack_layers` of the loop's)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from fedlora_jax import models  # pylint: disable=import-outside-toplevel
  from tests.fed_fixtures import TINY, tiny_model  # pylint: disable=import-outside-toplevel
  cfg = TINY.replace(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     scan_layers="off", **cfg_overrides)
  lcfg = models.LoRAConfig(rank=2, alpha=4.0)
  graphdef, base, lora = tiny_model(cfg, lcfg)

  def build_scanned():
    m = models.CausalLM(cfg.replace(scan_layers="on"), rngs=nnx.Rngs(params=0))
    models.add_lora(m, lcfg, rngs=nnx.Rngs(lora=1))
    return m

  return graphdef, base, lora, models.split_lora(nnx.eval_shape(build_scanned))[0]


def _scan_on_mesh(F, sharding, tr, results: dict, report: dict) -> None:
  """Two FedAvg rounds of a 2-layer model: the layer loop on one device vs the layer scan on the
  mesh (stacked base [L, ...], its layer axis replicated, the rest split over `model`)."""
  from fedlora_jax import models  # pylint: disable=import-outside-toplevel
  graphdef, base, lora, graphdef_scan = _two_layer_loop_and_scan()
  alg = F.make_algorithm("fedavg")
  runs = {"loop_single": (graphdef, base, lora, None),
          "scan_sharded": (graphdef_scan, models.stack_layers(base), models.stack_layers(lora),
                           sharding)}
  for mode, (gd, b, l, sh) in runs.items():
    fr = F.FederatedRound(gd, alg, tr, num_clients=MESH_CLIENTS, sharding=sh)
    state, base_m = fr.place(F.init_state(alg, l, MESH_CLIENTS, seed=0), b)
    for rnd in range(2):
      state, base_m, m = fr(state, base_m, *fed_round_inputs(MESH_CLIENTS, rnd))
      results.update(flat_leaves(f"scan/{mode}/metrics{rnd}", m))
    results.update(flat_leaves(f"scan/{mode}/global_lora",
                               models.unstack_layers(state["global_lora"])))
  q = base_m["model"]["layers"]["self_attn"]["q_proj"]["weight"]
  report["scan_q_proj"] = _describe(q)


def run_quant(out_dir: str) -> None:
  jax = _configure_jax()
  from fedlora_jax import federated as F  # pylint: disable=import-outside-toplevel
  from fedlora_jax import models  # pylint: disable=import-outside-toplevel

  n = MESH_CLIENTS
  graphdef, base, lora, graphdef_scan = _two_layer_loop_and_scan(quantize="nf4",
                                                                 quant_block_size=16)
  sharding = F.ClientSharding(F.make_mesh(*MESH_SHAPE))
  tr = F.LocalTraining(local_steps=K, optimizer="sgd", learning_rate=1e-2)
  alg = F.make_algorithm("fedavg")
  runs = {"float_single": (graphdef, models.dequantize_tree(base), lora, None),
          "quant_single": (graphdef, base, lora, None),
          "quant_sharded": (graphdef, base, lora, sharding),
          "quant_scan_sharded": (graphdef_scan, models.stack_layers(base),
                                 models.stack_layers(lora), sharding)}
  results: dict[str, np.ndarray] = {}
  report: dict = {"mesh": dict(sharding.mesh.shape)}
  for mode, (gd, b, l, sh) in runs.items():
    fr = F.FederatedRound(gd, alg, tr, num_clients=n, sharding=sh)
    state, base_m = fr.place(F.init_state(alg, l, n, seed=0), b)
    for rnd in range(2):
      args = (state, base_m, *fed_round_inputs(n, rnd))
      if rnd == 1 and sh is not None:
        from fedlora_jax.benchmarks.abstract import AbstractRound  # pylint: disable=import-outside-toplevel
        report[f"{mode}/argument_bytes"] = int(
            fr.lower(*args).compile().memory_analysis().argument_size_in_bytes)
        report[f"{mode}/counted_argument_bytes"] = AbstractRound(
            fr, state, base_m, args[2], n).argument_bytes_per_device()
      state, base_m, m = fr(*args)
      results.update(flat_leaves(f"{mode}/metrics{rnd}", m))
    results.update(flat_leaves(f"{mode}/global_lora", models.unstack_layers(state["global_lora"])))
    if sh is not None:
      layers = base_m["model"]["layers"]
      q = (layers if mode == "quant_scan_sharded" else layers[0])["self_attn"]["o_proj"]["weight"]
      report[f"{mode}/o_proj"] = {"codes": _describe(q.codes), "scale": _describe(q.scale)}
  np.savez(os.path.join(out_dir, "quant.npz"), **results)
  with open(os.path.join(out_dir, "quant.json"), "w") as f:
    json.dump(report, f)


def mp_round(F, graphdef, base, lora, sharding):
  """One FedAvg round of MP_CLIENTS clients (shared by the processes and the reference)."""
  alg = F.make_algorithm("fedavg")
  # Plain SGD: Adam's first step, ~lr * sign(grad), would turn fp noise in tiny grads into big
  # differences between the 4-device and the 1-device program.
  tr = F.LocalTraining(local_steps=K, optimizer="sgd", learning_rate=5e-2)
  fr = F.FederatedRound(graphdef, alg, tr, num_clients=MP_CLIENTS, sharding=sharding)
  state, base = fr.place(F.init_state(alg, lora, MP_CLIENTS, seed=0), base)
  from tests.fed_fixtures import client_batches  # pylint: disable=import-outside-toplevel
  batches = client_batches(MP_CLIENTS, K, seed=7)
  state, _, metrics = fr(state, base, batches, np.arange(MP_CLIENTS), MP_COUNTS)
  return state, metrics


def run_process(coordinator: str, num_processes: int, process_id: int, out_dir: str) -> None:
  jax = _configure_jax()
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from fedlora_jax.federated import distributed  # pylint: disable=import-outside-toplevel
  distributed.initialize(coordinator, num_processes, process_id)
  from fedlora_jax import federated as F  # pylint: disable=import-outside-toplevel
  from tests.fed_fixtures import tiny_model  # pylint: disable=import-outside-toplevel

  mesh = distributed.global_mesh()
  graphdef, base, lora = tiny_model()
  state, metrics = mp_round(F, graphdef, base, lora, F.ClientSharding(mesh))
  out = {"process_index": np.array(jax.process_index()),
         "process_count": np.array(jax.process_count()),
         "device_count": np.array(jax.device_count()),
         "local_device_count": np.array(jax.local_device_count())}
  # The global adapter is replicated: every process holds all of it.
  out.update(flat_leaves("global_lora", jax.tree.map(lambda x: x.addressable_data(0),
                                                  state["global_lora"])))
  # The losses are split by client: this process holds the rows of its own devices' clients.
  loss = metrics["loss"]
  rows = sorted(s.index[0].indices(MP_CLIENTS)[0] for s in loss.addressable_shards)
  out["loss_rows"] = np.array(rows)
  out["loss_local"] = np.concatenate(
      [np.asarray(s.data) for s in sorted(loss.addressable_shards,
                                          key=lambda s: s.index[0].indices(MP_CLIENTS)[0])])
  # `put` of a global array that this process only partly holds (a reshard, not a host copy).
  sh = F.ClientSharding(mesh)
  loss_all = sh.put(loss, sh.replicated)
  out["loss_all"] = np.asarray(loss_all.addressable_data(0))
  # Mesh shapes that cannot be placed over 2 processes x 2 devices.
  for name, err in _errors({"one_process": lambda: distributed.global_mesh(clients=1, model=2),
                            "model_across_hosts": lambda: F.make_mesh(1, 4)}).items():
    out[f"error_{name}"] = np.array(" ".join(err) if err else "")
  np.savez(os.path.join(out_dir, f"process_{process_id}.npz"), **out)
  distributed.shutdown()


def main(argv: list[str]) -> None:
  if argv[1] == "sharded":
    run_sharded(argv[2])
  elif argv[1] == "mesh2d":
    run_mesh2d(argv[2])
  elif argv[1] == "quant":
    run_quant(argv[2])
  elif argv[1] == "process":
    run_process(argv[2], int(argv[3]), int(argv[4]), argv[5])
  else:
    raise SystemExit(f"unknown mode {argv[1]!r}; see the module docstring")


if __name__ == "__main__":
  main(sys.argv)
