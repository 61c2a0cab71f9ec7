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
    # Same initial adapter, same data: the first local step's loss must agree across frameworks.
    out["first_step_loss_max_abs_diff_vs_torch"] = float(np.max(np.abs(
        np.asarray(out["engine"]["losses"])[:, 0] - np.asarray(out["torch_peft"]["losses"])[:, 0])))
  return out


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
          f"{row['verify_cpu_s'] * 1e3:.1f} ms)")
  return {"rows": rows}


def gpu_section(presets: list[str], shape: RoundShape, repeats: int, logits_chunk: int,
                dry_run: bool, log: Log = print) -> dict[str, Any]:
  """bf16 + remat rounds of the paper-size architectures with random weights.

  With `dry_run`, each preset is replaced by the tiny Qwen3 shape (same dtypes, remat) so the
  code path is exercised on CPU.
  """
  import jax
  dev = jax.devices()[0]
  if dev.platform == "cpu" and not dry_run:
    return {"skipped": "no GPU/TPU device (use --gpu_dry_run to exercise the code on CPU)"}
  peak = flops.chip_peak(dev.device_kind)
  rows = []
  for name in presets:
    cfg = models.preset(name, param_dtype="bfloat16", dtype="bfloat16", remat=True)
    if dry_run:
      cfg = models.preset("qwen3-tiny", param_dtype="bfloat16", dtype="bfloat16", remat=True)
    t = time.perf_counter()
    setup = jax_round.build(cfg, shape.rank)
    init_s = time.perf_counter() - t
    batches = client_batches(shape, cfg.vocab_size)
    timing = jax_round.time_engine(setup, shape, batches, repeats=repeats,
                                   training=jax_round.local_training(shape,
                                                                     logits_chunk=logits_chunk))
    fpt = flops.train_flops_per_token(cfg, shape.rank, shape.seq)["total"]
    row = {"preset": name, "dry_run": dry_run, "init_s": init_s, **timing.to_dict(),
           "flops_per_token": fpt, "model_flops_per_s": timing.tokens_per_s * fpt,
           "device_kind": dev.device_kind, "chip_peak_flops": peak}
    row.pop("losses", None)
    if peak:
      row["mfu"] = row["model_flops_per_s"] / peak
    rows.append(row)
    log(f"  gpu {name}{' (dry run: tiny shape)' if dry_run else ''}: {timing.median_s:.3f} s/round, "
        f"{timing.tokens_per_s:.0f} tok/s, compile {timing.compile_s:.1f} s"
        + (f", MFU {row['mfu']:.1%}" if peak else ""))
    del setup
  return {"shape": dataclasses.asdict(shape), "rows": rows}
