"""The benchmark sections that `scripts/benchmark.py` runs; each returns a JSON-able dict."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import numpy as np

from fedlora_jax import models
from fedlora_jax.benchmarks import flops, jax_round, torch_peft
from fedlora_jax.benchmarks.data import RoundShape, client_batches, target_tokens, trained_tokens

Log = Callable[[str], None]


@dataclasses.dataclass
class RoundOptions:
  preset: str = "qwen3-tiny"
  shape: RoundShape = dataclasses.field(default_factory=RoundShape)
  repeats: int = 3
  logits_chunk: int = 64
  max_target_tokens: int | None = None
  answer_tokens: int | None = None
  pad_fraction: float = 0.0
  torch_threads: int | None = None
  run_torch: bool = True
  run_sequential: bool = True
  seed: int = 0


def round_section(opt: RoundOptions, peak_flops: float | None, log: Log = print) -> dict[str, Any]:
  """Engine vs sequential JAX vs PyTorch + PEFT on one shape; ratios and MFU."""
  cfg = models.preset(opt.preset)
  shape = opt.shape
  setup = jax_round.build(cfg, shape.rank, seed=opt.seed)
  batches = client_batches(shape, cfg.vocab_size, seed=opt.seed, pad_fraction=opt.pad_fraction,
                           answer_tokens=opt.answer_tokens)
  tr = jax_round.local_training(shape, logits_chunk=opt.logits_chunk,
                                max_target_tokens=opt.max_target_tokens)
  out: dict[str, Any] = {
      "preset": opt.preset, "shape": dataclasses.asdict(shape),
      "trained_tokens": trained_tokens(batches), "target_tokens": target_tokens(batches),
      "slots": shape.slots, "logits_chunk": opt.logits_chunk,
      "max_target_tokens": opt.max_target_tokens,
      "flops_per_token": flops.train_flops_per_token(cfg, shape.rank, shape.seq),
  }
  runs: dict[str, jax_round.RoundTiming | torch_peft.TorchRoundResult] = {}
  engine = jax_round.time_engine(setup, shape, batches, repeats=opt.repeats, training=tr)
  runs["engine"] = engine
  log(f"  engine:         {engine.median_s:7.3f} s/round  {engine.tokens_per_s:8.0f} tok/s  "
      f"(compile {engine.compile_s:.1f} s)")
  if opt.run_sequential:
    seq = jax_round.time_sequential(setup, shape, batches, repeats=opt.repeats, training=tr)
    runs["sequential_jax"] = seq
    log(f"  sequential JAX: {seq.median_s:7.3f} s/round  {seq.tokens_per_s:8.0f} tok/s  "
        f"(compile {seq.compile_s:.1f} s)")
  if opt.run_torch:
    threads = opt.torch_threads or os.cpu_count() or 1
    tres = torch_peft.time_rounds(setup.model, setup.lora, setup.lora_config, batches,
                                  np.full(shape.clients, 100.0), repeats=opt.repeats,
                                  num_threads=threads)
    runs["torch_peft"] = tres
    log(f"  torch + PEFT:   {np.median(tres.round_s):7.3f} s/round  "
        f"{out['trained_tokens'] / np.median(tres.round_s):8.0f} tok/s  "
        f"({tres.num_threads} threads)")
  fpt = out["flops_per_token"]["total"]
  for name, r in runs.items():
    if isinstance(r, torch_peft.TorchRoundResult):
      d = {"round_s": r.round_s, "median_s": float(np.median(r.round_s)),
           "num_threads": r.num_threads, "setup_s": r.setup_s, "losses": r.losses.tolist()}
      d["tokens_per_s"] = out["trained_tokens"] / d["median_s"]
      d["host_peak_rss_growth_bytes"] = r.host_peak_rss_growth_bytes
    else:
      d = r.to_dict()
    d["model_flops_per_s"] = d["tokens_per_s"] * fpt
    if peak_flops:
      d["mfu"] = d["model_flops_per_s"] / peak_flops
    out[name] = d
  tps = {k: out[k]["tokens_per_s"] for k in runs}
  out["ratios"] = {f"engine/{k}": tps["engine"] / v for k, v in tps.items() if k != "engine"}
  if "torch_peft" in out:
    # Same weights, initial adapter, data and AdamW + clipping: every client's loss at every
    # local step must agree across frameworks (steps after the first test the whole update).
    out["loss_max_abs_diff_vs_torch"] = float(np.max(np.abs(
        np.asarray(out["engine"]["losses"]) - np.asarray(out["torch_peft"]["losses"]))))
  return out


_OFF = {"fuse_lora": "off", "remat_policy": "none", "attention_impl": "xla", "scan_layers": "off"}
ABLATIONS = {  # name -> ModelConfig overrides, each against "baseline"
    "baseline": _OFF,
    "fuse_lora": {**_OFF, "fuse_lora": "on"},
    "remat full": {**_OFF, "remat_policy": "full"},
    "remat save_base_matmuls": {**_OFF, "remat_policy": "save_base_matmuls"},
    "scan_layers": {**_OFF, "scan_layers": "on"},
}


QUANTIZED = {  # name -> ModelConfig overrides: the same float weights, stored as each format
    "float": _OFF,
    "int8": {**_OFF, "quantize": "int8"},
    "nf4": {**_OFF, "quantize": "nf4"},
}


def ablation_section(preset: str, shape: RoundShape, repeats: int, logits_chunk: int,
                     variants: dict[str, dict] | None = None, log: Log = print) -> dict[str, Any]:
  """Engine tokens/s with each speed option on and off, the same weights and batches, rounds of
  all variants timed in turns in one process (ratios hold on a shared machine)."""
  variants = variants or ABLATIONS
  cfg = models.preset(preset)
  setup = jax_round.build(cfg, shape.rank)
  setups = {name: jax_round.with_model_config(setup, cfg.replace(**kw))
            for name, kw in variants.items()}
  batches = client_batches(shape, cfg.vocab_size)
  out = jax_round.interleaved_engines(
      setups, shape, batches, repeats=repeats,
      training=jax_round.local_training(shape, logits_chunk=logits_chunk))
  first = next(iter(out))
  for name, d in out.items():
    d["overrides"] = variants[name]
    d[f"tokens_per_s_over_{first}"] = d["tokens_per_s"] / out[first]["tokens_per_s"]
    log(f"  {name:24s} {d['median_s']:7.3f} s/round {d['tokens_per_s']:8.0f} tok/s "
        f"({d[f'tokens_per_s_over_{first}']:.2f}x {first}; compile {d['compile_s']:.1f} s)")
  return {"preset": preset, "shape": dataclasses.asdict(shape), "variants": out,
          "load_average_at_end": os.getloadavg()}


def dp_section(preset: str, shape: RoundShape, repeats: int, logits_chunk: int,
               log: Log = print) -> dict[str, Any]:
  """Tokens/s of one round without and with example-level DP-SGD (z = 1, C = 1), same batches:
  the cost of per-example gradients, clipping and noise."""
  from fedlora_jax.federated.safeguards import Safeguards
  from fedlora_jax.privacy import ExampleDP
  cfg = models.preset(preset)
  setup = jax_round.build(cfg, shape.rank)
  batches = client_batches(shape, cfg.vocab_size)
  tr = jax_round.local_training(shape, logits_chunk=logits_chunk)
  dp = Safeguards(example_dp=ExampleDP(1.0, 1.0, float(shape.batch)))
  out: dict[str, Any] = {"preset": preset, "shape": dataclasses.asdict(shape),
                         "trained_tokens": trained_tokens(batches)}
  for name, sg in (("no_dp", Safeguards()), ("dp_sgd", dp)):
    t = jax_round.time_engine(setup, shape, batches, repeats=repeats, training=tr,
                              safeguards=sg, name=name)
    out[name] = t.to_dict()
    log(f"  {name}: {t.median_s:7.3f} s/round  {t.tokens_per_s:8.0f} tok/s  "
        f"(compile {t.compile_s:.1f} s)")
  ratio = out["dp_sgd"]["tokens_per_s"] / out["no_dp"]["tokens_per_s"]
  out["dp_over_no_dp_tokens_per_s"] = ratio
  return out


def scaling_section(preset: str, points: list[RoundShape], repeats: int, logits_chunk: int,
                    log: Log = print) -> dict[str, Any]:
  cfg = models.preset(preset)
  rows = jax_round.scaling_sweep(cfg, points, repeats=repeats,
                                 training_kw={"logits_chunk": logits_chunk}, log=log)
  base = points[0]
  by_clients = [r for r in rows if r["shape"]["rank"] == base.rank and r["shape"]["seq"] == base.seq
                and r["shape"]["local_steps"] == base.local_steps
                and r["shape"]["batch"] == base.batch]
  fit = None
  if len(by_clients) >= 3:
    fit = jax_round.linear_fit([r["tokens"] for r in by_clients],
                               [r["median_s"] for r in by_clients])
    largest = max(by_clients, key=lambda r: r["shape"]["clients"])
    fit["intercept_fraction_at_max_clients"] = fit["intercept_s"] / largest["median_s"]
    fit["max_clients"] = largest["shape"]["clients"]
  return {"preset": preset, "rows": rows, "clients_fit": fit}


def ledger_section(clients: list[int], backends: list[str], py_ecc_max_clients: int,
                   repeats: int = 3, log: Log = print) -> dict[str, Any]:
  """Per backend and client count, `repeats` timed rounds (sign, aggregate, verify); each phase
  is reported as its median with every run kept (`*_runs`), since the machine is shared."""
  try:
    from fedlora_jax.ledger import backend_available, time_round
  except ImportError as e:  # the ledger package is optional for benchmarks
    return {"skipped": f"fedlora_jax.ledger.time_round unavailable: {e}"}
  rows = []
  for backend in backends:
    if not backend_available(backend):
      rows.append({"backend": backend, "skipped": f"{backend} is not installed"})
      continue
    for n in clients:
      if backend == "py_ecc" and n > py_ecc_max_clients:
        rows.append({"backend": backend, "clients": n,
                     "skipped": f"py_ecc limited to {py_ecc_max_clients} clients by flag"})
        continue
      time_round(backend, 2)  # warm-up (imports, caches)
      runs = [time_round(backend, n) for _ in range(repeats)]
      row: dict[str, Any] = {"backend": backend, "clients": n}
      for phase in runs[0]:
        row[phase + "_runs"] = [r[phase] for r in runs]
        row[phase] = float(np.median(row[phase + "_runs"]))
      rows.append(row)
      log(f"  ledger {backend:8s} N={n:3d}: sign {row['sign_s'] * 1e3:9.1f} ms, aggregate "
          f"{row['aggregate_s'] * 1e3:7.2f} ms, verify {row['verify_s'] * 1e3:9.1f} ms (runs: "
          + ", ".join(f"{v * 1e3:.1f}" for v in row["verify_s_runs"]) + f"; CPU "
          f"{row['verify_cpu_s'] * 1e3:.1f} ms); co-signature: aggregate "
          f"{row['cosign_aggregate_s'] * 1e3:.2f} ms, verify {row['cosign_verify_s'] * 1e3:.2f} ms "
          f"(CPU {row['cosign_verify_cpu_s'] * 1e3:.2f} ms)")
  return {"rows": rows}


def compile_section(preset: str, clients: int, shape: tuple[int, int, int], rank: int,
                    logits_chunk: int, variants: dict[str, dict], log: Log = print) -> dict:
  """Lowering and compile seconds of one bf16 round of `preset` (its depth unless a variant sets
  `num_hidden_layers`), from abstract shapes (no weights), for this process's backend; one row
  per variant (ModelConfig overrides). Compile CPU time is kept beside wall time: on a shared
  machine it is the steadier figure."""
  import jax
  from fedlora_jax.benchmarks.abstract import abstract_round
  rows = []
  for name, overrides in variants.items():
    cfg = models.preset(preset, param_dtype="bfloat16", dtype="bfloat16", **overrides)
    t = time.perf_counter()
    ar = abstract_round(cfg, rank, clients, shape, logits_chunk=logits_chunk)
    lowered = ar.lower()
    lower_s = time.perf_counter() - t
    t, cpu = time.perf_counter(), time.process_time()
    lowered.compile()
    compile_s, compile_cpu_s = time.perf_counter() - t, time.process_time() - cpu
    resolved = cfg.resolved()
    rows.append({"variant": name, "overrides": overrides, "lower_s": lower_s,
                 "compile_s": compile_s, "compile_cpu_s": compile_cpu_s,
                 "layers": cfg.num_hidden_layers,
                 "remat_policy": resolved.remat_policy, "fuse_lora": resolved.fuse_lora,
                 "attention_impl": resolved.attention_impl, "scan_layers": resolved.scan_layers})
    log(f"  compile {preset} {name}: trace + lower {lower_s:.1f} s, compile {compile_s:.1f} s "
        f"(CPU time {compile_cpu_s:.1f} s)")
  return {"preset": preset, "clients": clients, "shape": list(shape), "rank": rank,
          "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
          "load_average_at_end": os.getloadavg(), "rows": rows}


@dataclasses.dataclass
class GpuOptions:
  """The GPU section: paper-size architectures, bf16, full remat, layer scan, random weights."""

  presets: list[str] = dataclasses.field(default_factory=lambda: ["qwen3-1.7b", "qwen3-8b"])
  shape: RoundShape = dataclasses.field(default_factory=lambda: RoundShape(16, 1, 2, 512, 16))
  wide_clients: dict[str, int] = dataclasses.field(default_factory=dict)  # preset -> more clients
  repeats: int = 3
  logits_chunk: int = 128
  dry_run: bool = False  # tiny Qwen3 shape in place of each preset, on whatever device there is
  run_torch: bool = True
  run_sequential: bool = True
  peak_matmul_size: int = 8192
  quantize: str = "none"  # the frozen base's storage (`model.quantize`)


def _timing_row(preset: str, variant: str, timing: jax_round.RoundTiming, fpt: float,
                peak: float | None) -> dict[str, Any]:
  row = {"preset": preset, "variant": variant, **timing.to_dict(), "flops_per_token": fpt,
         "model_flops_per_s": timing.tokens_per_s * fpt}
  if peak:
    row["mfu"] = row["model_flops_per_s"] / peak
  return row


def gpu_section(opt: GpuOptions, log: Log = print) -> dict[str, Any]:
  """Per preset: the engine with XLA and with cuDNN attention, the same jitted client update
  called per client, PyTorch + PEFT clients one after another (same device), and the engine with
  `wide_clients` clients; tokens/s, MFU against a measured bf16 matmul peak, device memory.

  With `dry_run`, each preset is replaced by the tiny Qwen3 shape (same dtypes, remat), so the
  same code runs on CPU (cuDNN attention then fails to lower and its row says why).
  """
  import jax
  dev = jax.devices()[0]
  if dev.platform == "cpu" and not opt.dry_run:
    return {"skipped": "no GPU/TPU device (use --gpu_dry_run to exercise the code on CPU)"}
  size = opt.peak_matmul_size if not opt.dry_run else 256
  measured = flops.measure_matmul_peak(sizes=(size,), dtype="bfloat16")
  peak = measured["peak_flops"]
  log(f"  bf16 {size}^3 matmul: {peak / 1e12:.1f} TFLOP/s ({dev.device_kind})")
  out: dict[str, Any] = {"shape": dataclasses.asdict(opt.shape), "device_kind": dev.device_kind,
                         "matmul_peak": measured, "table_peak_flops": flops.chip_peak(
                             dev.device_kind), "dry_run": opt.dry_run, "quantize": opt.quantize,
                         "rows": []}
  shape = opt.shape
  tr = jax_round.local_training(shape, logits_chunk=opt.logits_chunk)
  for name in opt.presets:
    kw = dict(param_dtype="bfloat16", dtype="bfloat16", remat_policy="full", scan_layers="on",
              quantize=opt.quantize)
    cfg = (models.preset("qwen3-tiny", num_hidden_layers=2, vocab_size=1024, **kw)
           if opt.dry_run else models.preset(name, **kw))
    t = time.perf_counter()
    setup = jax_round.build(cfg, shape.rank)
    log(f"  {name}{' (dry run: tiny shape)' if opt.dry_run else ''}: random init "
        f"{time.perf_counter() - t:.1f} s")
    batches = client_batches(shape, cfg.vocab_size)
    fpt = flops.train_flops_per_token(cfg, shape.rank, shape.seq)["total"]

    def record(variant, run, rows=out["rows"]):
      try:
        timing = run()
      except Exception as e:  # noqa: BLE001 -- e.g. cuDNN attention on a CPU dry run
        rows.append({"preset": name, "variant": variant, "skipped": f"{type(e).__name__}: {e}"})
        log(f"    {variant:22s} skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return None
      rows.append(row := _timing_row(name, variant, timing, fpt, peak))
      dm = timing.device_memory or {}
      log(f"    {variant:22s} {timing.median_s:8.3f} s/round {timing.tokens_per_s:9.0f} tok/s  "
          f"MFU {row.get('mfu', float('nan')):6.1%}  compile {timing.compile_s:6.1f} s  "
          f"device peak {dm.get('peak_bytes_in_use', 0) / 2**30:.1f} GiB")
      return timing

    for impl in ("xla", "cudnn"):
      impl_setup = jax_round.with_model_config(setup, cfg.replace(attention_impl=impl))
      record(f"engine {impl}", lambda s=impl_setup: jax_round.time_engine(
          s, shape, batches, repeats=opt.repeats, training=tr))
    best = jax_round.with_model_config(setup, cfg.replace(attention_impl="auto"))
    if opt.run_sequential:
      record("per-client jit", lambda: jax_round.time_sequential(
          best, shape, batches, repeats=opt.repeats, training=tr))
    if opt.run_torch:
      record("torch + PEFT", lambda: _torch_timing(best, shape, batches, opt.repeats))
    if name in opt.wide_clients:
      wide = dataclasses.replace(shape, clients=opt.wide_clients[name])
      record(f"engine C={wide.clients}", lambda: jax_round.time_engine(
          best, wide, client_batches(wide, cfg.vocab_size), repeats=opt.repeats,
          training=tr))
    del setup, best
  return out


def _torch_timing(setup: jax_round.Setup, shape: RoundShape, batches: dict,
                  repeats: int) -> jax_round.RoundTiming:
  """PyTorch + PEFT on this machine's accelerator (CUDA when torch sees one), as a RoundTiming."""
  import torch
  device = "cuda" if torch.cuda.is_available() else "cpu"
  r = torch_peft.time_rounds(setup.model, setup.lora, setup.lora_config, batches,
                             np.full(shape.clients, 100.0), repeats=repeats,
                             num_threads=torch.get_num_threads(), device=device,
                             random_base=True)
  mem = ({"peak_bytes_in_use": int(torch.cuda.max_memory_allocated())} if device == "cuda"
         else None)
  return jax_round.RoundTiming(name="torch_peft", round_s=r.round_s, compile_s=0.0,
                               first_call_s=r.setup_s, tokens=trained_tokens(batches),
                               host_peak_rss_growth_bytes=r.host_peak_rss_growth_bytes,
                               device_memory=mem, losses=r.losses.tolist())
