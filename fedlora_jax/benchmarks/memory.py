"""Compiled per-device memory of a round on a `clients x model` mesh, from abstract shapes only.

The model is built with `nnx.eval_shape` (no weights), the round is lowered with
`jax.ShapeDtypeStruct` inputs and compiled for the mesh, and XLA's `memory_analysis()` gives each
device's argument and temporary bytes. JAX fixes its device count at start-up, so the section runs
this module in a subprocess with 8 forced CPU devices:

    python -m fedlora_jax.benchmarks.memory OUT_JSON '{"preset": "qwen3-8b", ...}'

Compiling all layers of an 8B model many times is slow on a small CPU, so each point is compiled
with `layers` = (L1, L2) decoder layers and extrapolated linearly to the preset's depth (every
layer adds the same parameters and, with remat, the same saved activations).

A quantized base (`model.quantize`): `quantization` gives the exact per-device argument bytes of
full-depth rounds for each preset and format from shapes and shardings alone (no compile), and
compiles the preset's rounds over the NF4 base like the bf16 ones, for the clients that fit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np

GB = 1e9


@dataclasses.dataclass(frozen=True)
class MemoryOptions:
  preset: str = "qwen3-8b"
  clients: tuple[int, ...] = (16, 64)
  model_sizes: tuple[int, ...] = (1, 2, 4, 8)
  local_steps: int = 1
  batch: int = 2
  seq: int = 512
  rank: int = 16
  logits_chunk: int = 128
  layers: tuple[int, int] = (1, 2)  # compiled depths; the preset's depth is extrapolated
  capacities_gb: tuple[float, ...] = (16, 24, 80, 141)
  devices: int = 8
  quantize: str = "none"  # the base format of the compiled points
  quant_block_size: int = 64
  # Exact argument bytes (no compile) of these presets with each of these base formats.
  argument_presets: tuple[str, ...] = ("qwen3-8b", "llama-3.1-8b")
  argument_formats: tuple[str, ...] = ("none", "int8", "int4", "nf4")


def _abstract_round(opt: MemoryOptions, preset: str, quantize: str, clients: int, model: int,
                    num_layers: int | None = None):
  """The round of `num_layers` layers (compiled with this backend's layer layout), or of the
  preset's depth with stacked layers (same arrays and bytes; traced in seconds, not minutes)."""
  from fedlora_jax import federated, models  # pylint: disable=import-outside-toplevel
  from fedlora_jax.benchmarks import abstract  # pylint: disable=import-outside-toplevel

  depth = {"scan_layers": "on"} if num_layers is None else {"num_hidden_layers": num_layers}
  cfg = models.preset(preset, param_dtype="bfloat16", dtype="bfloat16", remat_policy="full",
                      quantize=quantize, quant_block_size=opt.quant_block_size, **depth)
  sharding = federated.ClientSharding(federated.make_mesh(opt.devices // model, model))
  return abstract.abstract_round(cfg, opt.rank, clients, (opt.local_steps, opt.batch, opt.seq),
                                 logits_chunk=opt.logits_chunk, sharding=sharding)


def argument_point(opt: MemoryOptions, preset: str, quantize: str, clients: int,
                   model: int) -> dict:
  """Exact per-device argument bytes of a full-depth round (shapes and shardings, no compile)."""
  ar = _abstract_round(opt, preset, quantize, clients, model)
  return {"preset": preset, "quantize": quantize, "clients": clients, "model": model,
          "argument_bytes": ar.argument_bytes_per_device(), "base_bytes": int(ar.base_bytes)}


def compile_point(opt: MemoryOptions, num_layers: int, clients: int, model: int) -> dict:
  """Per-device bytes of one compiled round (FedAvg, bf16 activations, remat; the base in
  `opt.quantize`), and the arguments counted from shapes (`argument_point`'s way)."""
  ar = _abstract_round(opt, opt.preset, opt.quantize, clients, model, num_layers)
  t = time.perf_counter()
  compiled = ar.lower().compile()
  m = compiled.memory_analysis()
  return {"layers": num_layers, "clients": clients, "model": model,
          "clients_per_shard": clients // (opt.devices // model),
          "argument_bytes": int(m.argument_size_in_bytes),
          "temp_bytes": int(m.temp_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
          "alias_bytes": int(m.alias_size_in_bytes), "base_bytes": int(ar.base_bytes),
          "counted_argument_bytes": ar.argument_bytes_per_device(),
          "compile_s": time.perf_counter() - t}


def _extrapolate(lo: dict, hi: dict, depth: int) -> dict:
  """Linear in the number of layers, from two compiled depths."""
  out = {"layers": depth, "clients": lo["clients"], "model": lo["model"],
         "clients_per_shard": lo["clients_per_shard"]}
  for k in ("argument_bytes", "temp_bytes", "output_bytes", "alias_bytes", "base_bytes"):
    per_layer = (hi[k] - lo[k]) / (hi["layers"] - lo["layers"])
    out[k] = int(round(lo[k] + per_layer * (depth - lo["layers"])))
    out[f"{k}_per_layer"] = per_layer
  out["total_bytes"] = out["argument_bytes"] + out["temp_bytes"] + out["output_bytes"] \
      - out["alias_bytes"]
  return out


def fits(rows: list[dict], capacities_gb: tuple[float, ...]) -> list[dict]:
  """Per model size: bytes = fixed + per_client * clients per shard (a line through the two
  client counts); the largest clients per shard that fit each capacity."""
  out = []
  for model in sorted({r["model"] for r in rows}):
    pts = sorted((r for r in rows if r["model"] == model), key=lambda r: r["clients_per_shard"])
    a, b = pts[0], pts[-1]
    per_client = (b["total_bytes"] - a["total_bytes"]) / (b["clients_per_shard"]
                                                           - a["clients_per_shard"])
    fixed = a["total_bytes"] - per_client * a["clients_per_shard"]
    out.append({"model": model, "fixed_bytes": fixed, "per_client_bytes": per_client,
                "max_clients_per_shard": {
                    str(c): max(int((c * GB - fixed) // per_client), 0) for c in capacities_gb}})
  return out


def arguments(opt: MemoryOptions) -> list[dict]:
  """`argument_point` for every preset of `opt.argument_presets`, base format, model size and
  client count."""
  return [argument_point(opt, p, q, c, m) for p in opt.argument_presets
          for q in opt.argument_formats for m in opt.model_sizes for c in opt.clients]


def run(opt: MemoryOptions, log: Callable[[str], None] = print,
        save: Callable[[dict], None] | None = None) -> dict[str, Any]:
  """Every (model, clients) point; `save` gets the figures so far after each one."""
  from fedlora_jax import models  # pylint: disable=import-outside-toplevel
  depth = models.preset(opt.preset).num_hidden_layers
  args = arguments(opt)
  log(f"  exact arguments of {len(args)} full-depth rounds ({opt.argument_presets} x "
      f"{opt.argument_formats})")
  compiled, rows = [], []
  for model in opt.model_sizes:
    for clients in opt.clients:
      pts = [compile_point(opt, n, clients, model) for n in opt.layers]
      compiled += pts
      row = _extrapolate(pts[0], pts[1], depth)
      rows.append(row)
      if save is not None:
        save({"options": dataclasses.asdict(opt), "depth": depth, "compiled": compiled,
              "rows": rows, "arguments": args, "partial": True})
      log(f"  memory model={model} clients={clients}: args {row['argument_bytes'] / GB:6.2f} GB, "
          f"temp {row['temp_bytes'] / GB:6.2f} GB per device ({depth} layers, extrapolated "
          f"from {opt.layers}; compile {sum(p['compile_s'] for p in pts):.0f} s)")
  return {"options": dataclasses.asdict(opt), "depth": depth, "compiled": compiled,
          "rows": rows, "fits": fits(rows, opt.capacities_gb), "arguments": args}


def run_in_subprocess(opt: MemoryOptions, out_json: str, log: Callable[[str], None] = print,
                      timeout_s: float = 6 * 3600) -> dict[str, Any]:
  """`run` in a fresh Python with `opt.devices` forced CPU devices; returns its JSON."""
  import subprocess  # pylint: disable=import-outside-toplevel
  # Backend optimization level 0 only skips LLVM optimisation of the CPU code (much faster
  # compiles); buffer assignment, hence memory_analysis, happens before it and is unchanged.
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", XLA_FLAGS=(
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={opt.devices}"
      " --xla_backend_optimization_level=0").strip())
  args = json.dumps(dataclasses.asdict(opt))
  proc = subprocess.Popen([sys.executable, "-m", "fedlora_jax.benchmarks.memory", out_json, args],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  assert proc.stdout is not None
  for line in proc.stdout:
    log(line.rstrip())
  if proc.wait(timeout=timeout_s) != 0:
    raise RuntimeError(f"the memory benchmark subprocess failed with exit code {proc.returncode}")
  with open(out_json) as f:
    return json.load(f)


def main(argv: list[str]) -> None:
  out_json, args = argv[1], json.loads(argv[2])
  opt = MemoryOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
  import jax  # pylint: disable=import-outside-toplevel
  if jax.device_count() < opt.devices:
    raise SystemExit(f"needs {opt.devices} devices, found {jax.device_count()}")
  def save(res):
    with open(out_json, "w") as f:
      json.dump(res, f, indent=1)
  save(run(opt, lambda s: print(s, flush=True), save))


if __name__ == "__main__":
  main(sys.argv)
