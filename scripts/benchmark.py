r"""Benchmarks: round throughput vs a PyTorch + PEFT baseline, scaling, memory, MFU, ledger, GPU.

  python scripts/benchmark.py                                   # default CPU run (~10 min)
  python scripts/benchmark.py --sections=round --repeats=5
  python scripts/benchmark.py --sections=gpu                    # on a GPU machine
  python scripts/benchmark.py --sections=gpu --gpu_dry_run      # the GPU path, tiny, on CPU
  python scripts/benchmark.py --sections=memory                 # qwen3-8b per-device memory on
                                                                # 8 CPU devices (subprocess)
  python scripts/benchmark.py --sections=dp --skip_torch        # a round with vs without DP-SGD
  python scripts/benchmark.py --sections=deploy [--deploy_set=fed.rounds=3 ...]  # Flower vs
                                                                # simulation, configs/default.py
  nice python scripts/benchmark.py --sections=compile            # qwen3-8b round compile time
  python scripts/benchmark.py --sections=ablation --repeats=5   # each speed option on vs off
  python scripts/benchmark.py --sections=quantize --repeats=3   # float vs int8 vs nf4 base (CPU)
  python scripts/benchmark.py --sections=profile                # a CPU round's time by op kind
  python scripts/benchmark.py --sections=decode                 # generation tokens/s vs HF

A run of only the memory, dp, deploy, compile, profile, ablation, quantize or decode section
updates its own key of --out_json and its own heading of --out_md, leaving the other sections'
figures as they are.

Writes every figure to --out_json and a summary table to --out_md.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys

from absl import app, flags

_SECTIONS = flags.DEFINE_list("sections", ["round", "scaling", "ledger", "gpu"],
                              "Sections to run: round, scaling, ledger, gpu, memory, dp, compile, "
                              "profile, ablation, quantize, decode.")
_PRESET = flags.DEFINE_string("preset", "qwen3-tiny", "Model preset of the round section.")
_CLIENTS = flags.DEFINE_integer("clients", 8, "Clients per round (round section).")
_STEPS = flags.DEFINE_integer("local_steps", 4, "Local steps K.")
_BATCH = flags.DEFINE_integer("batch", 4, "Batch size per step.")
_SEQ = flags.DEFINE_integer("seq", 128, "Sequence length.")
_RANK = flags.DEFINE_integer("rank", 8, "LoRA rank.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (medians reported).")
_CHUNK = flags.DEFINE_integer("logits_chunk", 64, "Rows per client of [rows, V] logits at once.")
_MAX_TARGETS = flags.DEFINE_integer("max_target_tokens", None, "LocalTraining.max_target_tokens.")
_ANSWER = flags.DEFINE_integer("answer_tokens", None,
                               "Loss on the last this many tokens per row only (None: all).")
_NO_TORCH = flags.DEFINE_bool("skip_torch", False, "Skip the PyTorch + PEFT baseline.")
_NO_SEQ = flags.DEFINE_bool("skip_sequential", False, "Skip the sequential JAX loop.")
_SCALE_CLIENTS = flags.DEFINE_list("scaling_clients", ["1", "4", "16", "64"],
                                   "Client counts of the scaling sweep.")
_SCALE_SHAPE = flags.DEFINE_list("scaling_shape", ["1", "1", "128"],
                                 "K, B, S of the client sweep.")
_SCALE_RANKS = flags.DEFINE_list("scaling_ranks", ["8", "16", "64"], "Ranks swept (at 8 clients).")
_SCALE_SEQS = flags.DEFINE_list("scaling_seqs", ["128", "512"], "Sequence lengths swept (8 clients).")
_SCALE_REPEATS = flags.DEFINE_integer("scaling_repeats", 2, "Timed repetitions per scaling row.")
_LEDGER_CLIENTS = flags.DEFINE_list("ledger_clients", ["4", "16", "64"], "Ledger client counts.")
_LEDGER_BACKENDS = flags.DEFINE_list("ledger_backends", ["blspy", "arkworks", "py_ecc"],
                                     "BLS backends.")
_PY_ECC_MAX = flags.DEFINE_integer("ledger_py_ecc_max_clients", 4,
                                   "Largest client count timed with the slow py_ecc backend.")
_GPU_PRESETS = flags.DEFINE_list("gpu_presets", ["qwen3-1.7b", "qwen3-8b"],
                                 "Presets of the GPU section (llama-3.1-8b also works).")
_GPU_SHAPE = flags.DEFINE_list("gpu_shape", ["16", "1", "2", "512", "16"],
                               "C, K, B, S, r of the GPU section.")
_GPU_CHUNK = flags.DEFINE_integer("gpu_logits_chunk", 128, "logits_chunk of the GPU section.")
_GPU_DRY = flags.DEFINE_bool("gpu_dry_run", False, "Run the GPU section with a tiny model on CPU.")
_GPU_WIDE = flags.DEFINE_list("gpu_wide_clients", ["qwen3-1.7b:64"],
                              "PRESET:C pairs: an extra engine row with C clients.")
_GPU_QUANTIZE = flags.DEFINE_string("gpu_quantize", "none",
                                    "Frozen base storage of the GPU section: none int8 int4 nf4.")
_GPU_SKIP = flags.DEFINE_list("gpu_skip", [], "GPU rows to skip: torch, sequential.")
_MEM_PRESET = flags.DEFINE_string("memory_preset", "qwen3-8b", "Preset of the memory section.")
_MEM_CLIENTS = flags.DEFINE_list("memory_clients", ["16", "64"], "Client counts (memory).")
_MEM_MODEL = flags.DEFINE_list("memory_model_sizes", ["1", "2", "4", "8"], "mesh.model sizes.")
_MEM_SHAPE = flags.DEFINE_list("memory_shape", ["1", "2", "512", "16"], "K, B, S, r (memory).")
_MEM_LAYERS = flags.DEFINE_list("memory_layers", ["1", "2"],
                                "Two depths compiled; the preset's depth is extrapolated.")
_MEM_QUANTIZE = flags.DEFINE_list("memory_quantize", ["nf4"],
                                  "Quantized base formats also compiled (memory; empty: none).")
_MEM_QUANT_MODEL = flags.DEFINE_list("memory_quantize_model_sizes", ["1"],
                                     "mesh.model sizes compiled with a quantized base (memory).")
_COMPILE_PRESET = flags.DEFINE_string("compile_preset", "qwen3-8b",
                                      "Preset of the compile section (bf16, all layers).")
_COMPILE_SHAPE = flags.DEFINE_list("compile_shape", ["16", "1", "2", "512", "16"],
                                   "C, K, B, S, r of the compile section.")
_COMPILE_LAYERS = flags.DEFINE_list("compile_layers", [],
                                    "Depths compiled (empty: the preset's own depth).")
_PROFILE_SHAPE = flags.DEFINE_list(
    "profile_shape", ["6", "4", "4", "128", "16"],
    "C, K, B, S, r of the profile section (6 and 16 occur in no other dimension of qwen3-tiny).")
_DECODE_PRESET = flags.DEFINE_string("decode_preset", "qwen3-tiny", "Preset of the decode section.")
_DECODE_BATCHES = flags.DEFINE_list("decode_batches", ["1", "16"], "Batch sizes (decode).")
_DECODE_SHAPE = flags.DEFINE_list("decode_shape", ["32", "32", "4", "8"],
                                  "Prompt tokens, new tokens, adapters, LoRA rank (decode).")
_DECODE_DTYPE = flags.DEFINE_string("decode_dtype", "float32", "Params and activations (decode).")
_DECODE_LAYERS = flags.DEFINE_integer("decode_layers", 0, "Layers (decode); 0: the preset's.")
_DECODE_TORCH_THREADS = flags.DEFINE_integer(
    "decode_torch_threads", 0, "transformers' CPU threads (decode); 0: all cores.")
_DECODE_TORCH = flags.DEFINE_string("decode_torch_device", "cpu",
                                    "transformers' device (decode); not cpu: random torch weights.")
_COMPILE_CACHE = flags.DEFINE_bool(
    "compile_cache", False, "JAX's persistent compilation cache in --cache_dir/jax_cache (off by "
    "default: a warm cache would turn the compile-time figures into cache loads).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", "~/.cache/fedlora_jax", "Cache directory.")
_XLA_FLAGS = flags.DEFINE_string("xla_flags", "", "Appended to XLA_FLAGS before JAX starts.")
_OUT_JSON = flags.DEFINE_string("out_json", "benchmarks.json", "Where to write all figures.")
_OUT_MD = flags.DEFINE_string("out_md", "BENCHMARKS.md", "Markdown summary ('' to skip).")
_NOTES = flags.DEFINE_multi_string("note", [], "A note recorded in the JSON and the markdown.")
_DEPLOY_SET = flags.DEFINE_multi_string("deploy_set", [], "key=value overrides of "
                                        "configs/default.py for the deploy section's job.")
_DEPLOY_DIR = flags.DEFINE_string("deploy_workdir", "runs/benchmark_deploy",
                                  "Where the deploy section's two runs write (must not exist).")
_FROM_JSON = flags.DEFINE_string("from_json", None,
                                 "Only rewrite --out_md from this JSON (plus any --note).")


def _ints(xs):
  return [int(x) for x in xs]


def _update_section_only(key: str, figures: dict, heading: str, lines: list[str]) -> None:
  """Writes one section's figures into the existing --out_json and --out_md, nothing else."""
  from fedlora_jax.benchmarks import report
  old = {}
  if os.path.exists(_OUT_JSON.value):
    with open(_OUT_JSON.value) as f:
      old = json.load(f)
  old[key] = figures
  with open(_OUT_JSON.value, "w") as f:
    json.dump(old, f, indent=1, default=str)
  if _OUT_MD.value:
    text = open(_OUT_MD.value).read() if os.path.exists(_OUT_MD.value) else "# Benchmarks\n"
    with open(_OUT_MD.value, "w") as f:
      f.write(report.splice_section(text, heading, lines))
  print(f"wrote the {key} section of {_OUT_JSON.value} and {_OUT_MD.value}", flush=True)


def _deploy_only() -> None:
  """Runs the deploy section alone; writes its key of --out_json and its heading of --out_md."""
  import ast

  from fedlora_jax.run.configs import load_config_file
  from fedlora_jax.sites import bench
  cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "default.py"))
  for item in _DEPLOY_SET.value:
    key, _, text = item.partition("=")
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
      node = node[p]
    try:
      node[leaf] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      node[leaf] = text
  load_at_start = os.getloadavg()
  res = bench.deploy_section(cfg, os.path.abspath(_DEPLOY_DIR.value))
  res.update(load_average_at_start=load_at_start,date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             command=" ".join(["python scripts/benchmark.py"] + sys.argv[1:]),
             job="configs/default.py" + "".join(f" {x}" for x in _DEPLOY_SET.value),
             load_average_at_end=os.getloadavg())
  print("\n".join(bench.deploy_lines(res)), flush=True)
  _update_section_only("deploy", res, bench.DEPLOY_HEADING, bench.deploy_lines(res))


def main(argv):
  del argv
  if set(_SECTIONS.value) == {"deploy"}:  # runs alone (two whole jobs)
    return _deploy_only()
  if _FROM_JSON.value:
    from fedlora_jax.benchmarks import report
    with open(_FROM_JSON.value) as f:
      res = json.load(f)
    res["notes"] = list(res.get("notes", [])) + list(_NOTES.value)
    with open(_FROM_JSON.value, "w") as f:
      json.dump(res, f, indent=1, default=str)
    with open(_OUT_MD.value, "w") as f:
      f.write(report.markdown(res))
    return
  if _XLA_FLAGS.value:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _XLA_FLAGS.value).strip()
  import jax  # after XLA_FLAGS

  from fedlora_jax.compile_cache import enable_compilation_cache

  from fedlora_jax import models
  from fedlora_jax.benchmarks import flops, machine, report, suite
  from fedlora_jax.benchmarks.data import RoundShape

  cores = os.cpu_count() or 1
  try:
    import torch
    torch.set_num_threads(cores)  # torch uses its own BLAS threads, not OPENBLAS_* settings
  except ImportError:
    pass
  res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "command": " ".join(["python scripts/benchmark.py"] + sys.argv[1:]),
         "machine": machine.machine_info(), "notes": list(_NOTES.value)}
  if _COMPILE_CACHE.value:
    res["compile_cache_dir"] = enable_compilation_cache(os.path.join(
        os.path.expanduser(_CACHE_DIR.value), "jax_cache"))
  log = lambda s: print(s, flush=True)
  sections = set(_SECTIONS.value)
  on_cpu = jax.default_backend() == "cpu"
  if sections & {"round", "scaling"} and on_cpu:
    log("matmul peak ...")
    res["matmul_peak"] = flops.measure_matmul_peak()
    res["torch_matmul_peak"] = flops.measure_torch_matmul_peak()
    log(f"  JAX fp32 {res['matmul_peak']['peak_flops'] / 1e9:.0f} GFLOP/s")
  peak = res.get("matmul_peak", {}).get("peak_flops") if on_cpu else flops.chip_peak(
      jax.devices()[0].device_kind)
  if "round" in sections:
    log("round ...")
    shape = RoundShape(_CLIENTS.value, _STEPS.value, _BATCH.value, _SEQ.value, _RANK.value)
    res["round"] = suite.round_section(suite.RoundOptions(
        preset=_PRESET.value, shape=shape, repeats=_REPEATS.value, logits_chunk=_CHUNK.value,
        max_target_tokens=_MAX_TARGETS.value, answer_tokens=_ANSWER.value,
        torch_threads=cores, run_torch=not _NO_TORCH.value and on_cpu,
        run_sequential=not _NO_SEQ.value), peak, log)
  if "ablation" in sections:
    log("ablation ...")
    res["ablation"] = suite.ablation_section(_PRESET.value, RoundShape(
        _CLIENTS.value, _STEPS.value, _BATCH.value, _SEQ.value, _RANK.value), _REPEATS.value,
        _CHUNK.value, log=log)
  if "quantize" in sections:
    log("quantize ...")
    res["quantize"] = suite.ablation_section(_PRESET.value, RoundShape(
        _CLIENTS.value, _STEPS.value, _BATCH.value, _SEQ.value, _RANK.value), _REPEATS.value,
        _CHUNK.value, variants=suite.QUANTIZED, log=log)
  if "dp" in sections:
    log("dp ...")
    res["dp"] = suite.dp_section(_PRESET.value, RoundShape(
        _CLIENTS.value, _STEPS.value, _BATCH.value, _SEQ.value, _RANK.value), _REPEATS.value,
        _CHUNK.value, log)
  if "scaling" in sections:
    log("scaling ...")
    k, b, s = _ints(_SCALE_SHAPE.value)
    points = [RoundShape(c, k, b, s, 8) for c in _ints(_SCALE_CLIENTS.value)]
    points += [RoundShape(8, k, b, s, r) for r in _ints(_SCALE_RANKS.value) if r != 8]
    points += [RoundShape(8, k, b, sq, 8) for sq in _ints(_SCALE_SEQS.value) if sq != s]
    res["scaling"] = suite.scaling_section(_PRESET.value, points, _SCALE_REPEATS.value,
                                           _CHUNK.value, log)
  if "ledger" in sections:
    log("ledger ...")
    res["ledger"] = suite.ledger_section(_ints(_LEDGER_CLIENTS.value), _LEDGER_BACKENDS.value,
                                         _PY_ECC_MAX.value, _REPEATS.value, log)
  if "gpu" in sections:
    log("gpu ...")
    c, k, b, s, r = _ints(_GPU_SHAPE.value)
    wide = dict(p.split(":") for p in _GPU_WIDE.value)
    res["gpu"] = suite.gpu_section(suite.GpuOptions(
        presets=_GPU_PRESETS.value, shape=RoundShape(c, k, b, s, r),
        wide_clients={p: int(n) for p, n in wide.items()}, repeats=_REPEATS.value,
        logits_chunk=_GPU_CHUNK.value, dry_run=_GPU_DRY.value,
        run_torch="torch" not in _GPU_SKIP.value,
        run_sequential="sequential" not in _GPU_SKIP.value, quantize=_GPU_QUANTIZE.value), log)
  if "compile" in sections:
    log("compile ...")
    c, k, b, s, r = _ints(_COMPILE_SHAPE.value)
    depths = _ints(_COMPILE_LAYERS.value) or [models.preset(_COMPILE_PRESET.value)
                                              .num_hidden_layers]
    variants = {f"layer {how}, {n} layers": {"remat_policy": "full", "num_hidden_layers": n,
                                             "scan_layers": scan}
                for n in depths for how, scan in (("loop", "off"), ("scan", "on"))}
    res["compile"] = suite.compile_section(_COMPILE_PRESET.value, c, (k, b, s), r, _GPU_CHUNK.value,
                                           variants, log)
  if "profile" in sections:
    log("profile ...")
    from fedlora_jax.benchmarks import profile
    c, k, b, s, r = _ints(_PROFILE_SHAPE.value)
    res["profile"] = profile.profile_round(_PRESET.value, RoundShape(c, k, b, s, r),
                                           logits_chunk=_CHUNK.value)
    log("\n".join(report.profile_lines(res["profile"])))
  if "decode" in sections:
    log("decode ...")
    from fedlora_jax.benchmarks import decode
    prompt, new, adapters, rank = _ints(_DECODE_SHAPE.value)
    res["decode"] = decode.decode_section(decode.DecodeOptions(
        preset=_DECODE_PRESET.value, batches=tuple(_ints(_DECODE_BATCHES.value)),
        prompt_len=prompt, new_tokens=new, adapters=adapters, rank=rank,
        repeats=_REPEATS.value, dtype=_DECODE_DTYPE.value, run_torch=not _NO_TORCH.value,
        torch_device=_DECODE_TORCH.value, torch_threads=_DECODE_TORCH_THREADS.value,
        num_hidden_layers=_DECODE_LAYERS.value), log)
  if "memory" in sections:
    log("memory ...")
    from fedlora_jax.benchmarks import memory
    k, b, s, r = _ints(_MEM_SHAPE.value)
    opt = memory.MemoryOptions(
        preset=_MEM_PRESET.value, clients=tuple(_ints(_MEM_CLIENTS.value)),
        model_sizes=tuple(_ints(_MEM_MODEL.value)), local_steps=k, batch=b, seq=s, rank=r,
        layers=tuple(_ints(_MEM_LAYERS.value)))
    res["memory"] = memory.run_in_subprocess(opt, _OUT_JSON.value + ".memory.tmp", log)
    res["memory"]["quantized"] = {
        q: memory.run_in_subprocess(dataclasses.replace(
            opt, quantize=q, model_sizes=tuple(_ints(_MEM_QUANT_MODEL.value)),
            argument_presets=()), _OUT_JSON.value + ".memory.tmp", log)
        for q in _MEM_QUANTIZE.value}
    os.remove(_OUT_JSON.value + ".memory.tmp")
  only = next(iter(sections)) if len(sections) == 1 else None
  if only in report.SECTION_WRITERS:  # a run of one such section replaces only its own figures
    res[only].update(date=res["date"], command=res["command"],
                     load_average_at_start=res["machine"]["load_average_at_start"],
                     load_average_at_end=os.getloadavg())
    heading, lines = report.SECTION_WRITERS[only]
    _update_section_only(only, res[only], heading, lines(res[only]))
    return
  res["host_max_rss_bytes"] = machine.max_rss_bytes()
  res["load_average_at_end"] = os.getloadavg()
  with open(_OUT_JSON.value, "w") as f:
    json.dump(res, f, indent=1, default=str)
  if _OUT_MD.value:
    with open(_OUT_MD.value, "w") as f:
      f.write(report.markdown(res))
  log(f"wrote {_OUT_JSON.value}" + (f" and {_OUT_MD.value}" if _OUT_MD.value else ""))


if __name__ == "__main__":
  app.run(main)
