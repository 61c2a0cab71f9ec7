"""The benchmark sections behind scripts/benchmark.py: round throughput three ways, scaling,
ledger cost, and the GPU mode. Each returns a JSON-able dict; `markdown` renders them."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import numpy as np

from fedlora_jax import models
from fedlora_jax.benchmarks import flops, jax_round, torch_peft
from fedlora_jax.benchmarks.data import RoundShape, client_batches, trained_tokens

# The issue's CPU shape: tiny Qwen3 architecture, LoRA r=8 on all seven projections.
CPU_MODEL = dict(vocab_size=8192, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=32)


def cpu_config(**overrides) -> models.ModelConfig:
  return models.preset("qwen3-tiny", **{**CPU_MODEL, **overrides})


def _mfu(tokens_per_s: float, cfg: models.ModelConfig, rank: int, seq: int, peak: float) -> dict:
  per_token = flops.train_flops_per_token(cfg, rank, seq)
  achieved = tokens_per_s * per_token["total"]
  return {"model_flops_per_token": per_token, "achieved_flops": achieved, "peak_flops": peak,
          "mfu": achieved / peak if peak else None}


def round_section(cfg: models.ModelConfig, shape: RoundShape, *, repeats: int,
                  with_torch: bool, peak: float) -> dict[str, Any]:
  """Engine vs the same JAX code one client at a time vs PyTorch + PEFT, same shapes."""
  setup = jax_round.build(cfg, shape.rank)
  batches = client_batches(shape, cfg.vocab_size)
  tokens = trained_tokens(batches)
  out: dict[str, Any] = {"shape": dataclasses.asdict(shape), "tokens_per_round": tokens}
  for name, fn in (("engine", jax_round.time_engine), ("sequential_jax", jax_round.time_sequential)):
    timing = fn(setup, shape, batches, repeats=repeats)
    row = timing.to_dict()
    row.pop("losses", None)
    row.update(median_round_s=timing.median_s, tokens_per_s=timing.tokens_per_s,
               **_mfu(timing.tokens_per_s, cfg, shape.rank, shape.seq, peak))
    out[name] = row
    logging.info("%s: %.3f s/round, %.0f tokens/s, compile %.1f s", name, timing.median_s,
                 timing.tokens_per_s, timing.compile_s)
  if with_torch:
    res = torch_peft.time_rounds(setup.model, setup.lora, setup.lora_config, batches,
                                 np.full(shape.clients, 100.0), repeats=repeats,
                                 num_threads=os.cpu_count() or 1)
    median = float(np.median(res.round_s))
    out["torch_peft"] = {"round_s": res.round_s, "median_round_s": median,
                         "tokens_per_s": tokens / median, "torch_threads": res.num_threads,
                         "setup_s": res.setup_s,
                         **_mfu(tokens / median, cfg, shape.rank, shape.seq, peak)}
    out["engine_over_torch"] = out["engine"]["tokens_per_s"] / out["torch_peft"]["tokens_per_s"]
    logging.info("torch+peft: %.3f s/round, %.0f tokens/s", median, tokens / median)
  out["engine_over_sequential"] = (out["engine"]["tokens_per_s"]
                                   / out["sequential_jax"]["tokens_per_s"])
  return out


def scaling_section(cfg: models.ModelConfig, *, clients: list[int], ranks: list[int],
                    seqs: list[int], repeats: int) -> dict[str, Any]:
  """Round time and memory as clients, rank and sequence length grow (K=2, B=2)."""
  points = [RoundShape(clients=c, local_steps=2, batch=2, seq=seqs[0], rank=ranks[0])
            for c in clients]
  points += [RoundShape(clients=clients[0], local_steps=2, batch=2, seq=seqs[0], rank=r)
             for r in ranks[1:]]
  points += [RoundShape(clients=clients[0], local_steps=2, batch=2, seq=s, rank=ranks[0])
             for s in seqs[1:]]
  rows = jax_round.scaling_sweep(cfg, points, repeats=repeats, log=logging.info)
  by_clients = rows[:len(clients)]
  fit = jax_round.linear_fit([r["tokens"] for r in by_clients],
                             [float(np.median(r["round_s"])) for r in by_clients])
  return {"rows": rows, "clients_linear_fit": fit}


def ledger_section(clients: list[int], py_ecc_max: int) -> dict[str, Any]:
  from fedlora_jax import ledger
  out: dict[str, Any] = {}
  for backend in ("arkworks", "py_ecc"):  # "auto" is one of these two
    if backend == "arkworks" and not ledger.arkworks_available():
      out[backend] = "skipped: py-arkworks-bls12381 is not installed"
      continue
    out[backend] = {}
    for n in clients:
      if backend == "py_ecc" and n > py_ecc_max:
        continue
      out[backend][n] = ledger.time_round(backend, n)
      logging.info("ledger %s, %d clients: %s", backend, n, out[backend][n])
  return out


def gpu_section(presets: list[str], shape: RoundShape, *, repeats: int,
                dry_run: bool) -> dict[str, Any]:
  """The paper's architectures with random weights in bf16 with remat on the accelerator; with
  dry_run, a shrunken copy of each architecture on whatever device there is."""
  device = jax.devices()[0]
  if device.platform == "cpu" and not dry_run:
    return {"skipped": "no accelerator (use --gpu_dry_run to exercise this section on CPU)"}
  peak = flops.chip_peak(device.device_kind) or flops.measure_matmul_peak(
      dtype="bfloat16")["peak_flops"]
  out: dict[str, Any] = {"device": device.device_kind, "peak_flops": peak, "models": {}}
  for name in presets:
    overrides = dict(param_dtype="bfloat16", dtype="bfloat16", remat=True)
    if dry_run:
      overrides.update(num_hidden_layers=1, hidden_size=128, intermediate_size=256,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=1024)
    cfg = models.preset(name, **overrides)
    setup = jax_round.build(cfg, shape.rank)
    batches = client_batches(shape, cfg.vocab_size)
    timing = jax_round.time_engine(setup, shape, batches, repeats=repeats)
    row = timing.to_dict()
    row.pop("losses", None)
    row.update(median_round_s=timing.median_s, tokens_per_s=timing.tokens_per_s,
               **_mfu(timing.tokens_per_s, cfg, shape.rank, shape.seq, peak))
    out["models"][name] = row
    logging.info("gpu %s: %.0f tokens/s, MFU %.3f", name, timing.tokens_per_s, row["mfu"])
    del setup
  return out


def _f(x, fmt=".3g"):
  return "n/a" if x is None else format(x, fmt)


def markdown(result: dict[str, Any]) -> str:
  m = result["machine"]
  lines = ["# Benchmarks", "", f"Measured by `python scripts/benchmark.py` on "
           f"{m.get('cpu_model', '?')} ({m.get('cpu_count', '?')} cores, load average at start "
           f"{_f(m.get('load_average_at_start', [None])[0], '.2f')}), JAX "
           f"{m.get('versions', {}).get('jax', '?')}, backend {m.get('jax_backend', '?')}. "
           "Compile time is excluded from throughput; round times are medians.", ""]
  peak = result.get("matmul_peak", {})
  if peak:
    lines += [f"Measured fp32 matmul peak (JAX): {_f(peak['peak_flops'] / 1e9, '.1f')} GFLOP/s.",
              ""]
  if "round" in result:
    r = result["round"]
    s = r["shape"]
    lines += [f"## Federated round: {s['clients']} clients x {s['local_steps']} steps x batch "
              f"{s['batch']} x seq {s['seq']}, LoRA r={s['rank']}", "",
              "| variant | s/round | tokens/s | compile s | MFU |", "|---|---|---|---|---|"]
    for name in ("engine", "sequential_jax", "torch_peft"):
      if name in r:
        row = r[name]
        lines.append(f"| {name} | {_f(row['median_round_s'])} | {_f(row['tokens_per_s'], '.0f')}"
                     f" | {_f(row.get('compile_s'), '.1f')} | {_f(row.get('mfu'), '.2f')} |")
    lines += ["", f"Engine / sequential JAX: {_f(r['engine_over_sequential'], '.2f')}x."
              + (f" Engine / PyTorch+PEFT: {_f(r['engine_over_torch'], '.2f')}x."
                 if "engine_over_torch" in r else ""), ""]
  if "scaling" in result:
    lines += ["## Scaling (engine)", "", "| C | K | B | S | r | s/round | tokens/s | compile s |"
              " host RSS growth MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["scaling"]["rows"]:
      s = row["shape"]
      med = float(np.median(row["round_s"]))
      lines.append(f"| {s['clients']} | {s['local_steps']} | {s['batch']} | {s['seq']} | "
                   f"{s['rank']} | {med:.3f} | {row['tokens'] / med:.0f} | "
                   f"{row['compile_s']:.1f} | {row['host_peak_rss_growth_bytes'] / 2**20:.0f} |")
    fit = result["scaling"]["clients_linear_fit"]
    lines += ["", f"Round time vs tokens over the client sweep: {fit['intercept_s'] * 1e3:.1f} ms "
              f"fixed + {fit['s_per_token'] * 1e6:.2f} us/token (R^2 {fit['r2']:.4f}).", ""]
  if "ledger" in result:
    lines += ["## Ledger (one round: every client signs, aggregate, server verifies)", "",
              "| backend | clients | sign s | aggregate s | verify s |", "|---|---|---|---|---|"]
    for backend, rows in result["ledger"].items():
      if isinstance(rows, str):
        lines.append(f"| {backend} | {rows} | | | |")
        continue
      for n, t in rows.items():
        lines.append(f"| {backend} | {n} | {t['sign_s']:.4f} | {t['aggregate_s']:.4f} | "
                     f"{t['verify_s']:.4f} |")
    lines.append("")
  if "gpu" in result:
    g = result["gpu"]
    lines += ["## GPU mode", ""]
    if "skipped" in g:
      lines += [g["skipped"], ""]
    else:
      lines += [f"Device {g['device']}.", "", "| model | tokens/s | MFU | compile s |",
                "|---|---|---|---|"]
      for name, row in g["models"].items():
        lines.append(f"| {name} | {row['tokens_per_s']:.0f} | {_f(row['mfu'], '.2f')} | "
                     f"{row['compile_s']:.1f} |")
      lines.append("")
  return "\n".join(lines)
