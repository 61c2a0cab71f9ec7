"""BENCHMARKS.md from the benchmark JSON."""

from __future__ import annotations

from typing import Any


def _f(x, fmt="{:.0f}"):
  return "n/a" if x is None else fmt.format(x)


def markdown(res: dict[str, Any]) -> str:
  m = res["machine"]
  lines = ["# Benchmarks", "",
           f"Written by `scripts/benchmark.py` on {res['date']} (command: `{res['command']}`).", "",
           f"Machine: {m.get('cpu_model')}, {m.get('cpu_count')} cores, "
           f"{m.get('memory_gib')} GiB; JAX backend `{m.get('jax_backend')}` "
           f"({', '.join(sorted(set(m.get('devices', []))))}); load average at start "
           f"{', '.join(f'{x:.2f}' for x in m.get('load_average_at_start', []))}.",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
           f"XLA_FLAGS: `{m['env'].get('XLA_FLAGS') or ''}`.", ""]
  peak = res.get("matmul_peak")
  if peak:
    lines += [f"Measured fp32 matmul peak (JAX, square sizes {list(peak['by_size'])}): "
              f"**{peak['peak_flops'] / 1e9:.0f} GFLOP/s**"
              + (f"; PyTorch: {res['torch_matmul_peak']['peak_flops'] / 1e9:.0f} GFLOP/s "
                 f"({res['torch_matmul_peak']['num_threads']} threads)"
                 if res.get("torch_matmul_peak") else "") + ".", ""]
  if res.get("dp"):
    lines += dp_lines(res["dp"])
  r = res.get("round")
  if r:
    s = r["shape"]
    lines += ["## Federated round: engine vs sequential JAX vs PyTorch + PEFT", "",
              f"`{r['preset']}`, C={s['clients']} clients x K={s['local_steps']} local steps x "
              f"B={s['batch']} x S={s['seq']}, LoRA r={s['rank']} on all seven projections, "
              f"AdamW, clip 1.0. {r['trained_tokens']} trained tokens per round "
              f"({r['target_tokens']} loss targets); model FLOPs/token "
              f"{r['flops_per_token']['total'] / 1e6:.1f} M (4N base + 6N LoRA + attention). "
              f"Median of the timed rounds; compile excluded.", "",
              "| variant | s/round (median) | tokens/s | model GFLOP/s | MFU | compile s | "
              "host RSS growth MiB |",
              "|---|---|---|---|---|---|---|"]
    for name in ("engine", "sequential_jax", "torch_peft"):
      d = r.get(name)
      if not d:
        continue
      lines.append(
          f"| {name} | {d['median_s']:.3f} | {d['tokens_per_s']:.0f} | "
          f"{d['model_flops_per_s'] / 1e9:.1f} | {_f(d.get('mfu'), '{:.1%}')} | "
          f"{_f(d.get('compile_s'), '{:.1f}')} | "
          f"{_f(d.get('host_peak_rss_growth_bytes', 0) / 2**20)} |")
    lines.append("")
    for k, v in r["ratios"].items():
      lines.append(f"- {k}: **{v:.2f}x**")
    if "loss_max_abs_diff_vs_torch" in r:
      lines.append(f"- loss of every client at every local step, engine vs torch (same weights, "
                   f"data, adapter, AdamW + clipping): max |diff| "
                   f"{r['loss_max_abs_diff_vs_torch']:.2e}")
    lines.append("")
  sc = res.get("scaling")
  if sc and sc.get("rows"):
    lines += ["## Scaling (engine)", "", f"`{sc['preset']}`; one compile per row.", "",
              "| C | K | B | S | r | s/round | tokens/s | compile s | host RSS growth MiB | "
              "temp MiB (XLA) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in sc["rows"]:
      s = row["shape"]
      ma = row.get("memory_analysis") or {}
      lines.append(f"| {s['clients']} | {s['local_steps']} | {s['batch']} | {s['seq']} | "
                   f"{s['rank']} | {row['median_s']:.3f} | {row['tokens_per_s']:.0f} | "
                   f"{row['compile_s']:.1f} | {row['host_peak_rss_growth_bytes'] / 2**20:.0f} | "
                   f"{_f(ma.get('temp_size_in_bytes', 0) / 2**20)} |")
    fit = sc.get("clients_fit")
    if fit:
      lines += ["", f"Round time vs tokens over the client sweep: {fit['s_per_token'] * 1e6:.1f} "
                f"us/token + {fit['intercept_s'] * 1e3:.1f} ms fixed (R^2 {fit['r2']:.4f}); the "
                f"fixed part is {fit['intercept_fraction_at_max_clients']:.1%} of the round at "
                f"C={fit['max_clients']}."]
    lines.append("")
  led = res.get("ledger")
  if led:
    lines += ["## Ledger (BLS, per round)", ""]
    if "skipped" in led:
      lines.append(f"Skipped: {led['skipped']}")
    else:
      lines += ["| backend | clients | sign (all clients) ms | aggregate ms | verify ms (median) "
                "| verify ms (every run) | verify CPU ms |", "|---|---|---|---|---|---|---|"]
      for row in led["rows"]:
        if "skipped" in row:
          lines.append(f"| {row['backend']} | {row.get('clients', '')} | skipped: "
                       f"{row['skipped']} | | | | |")
        else:
          runs = ", ".join(f"{v * 1e3:.1f}" for v in row.get("verify_s_runs", []))
          lines.append(f"| {row['backend']} | {row['clients']} | {row['sign_s'] * 1e3:.1f} | "
                       f"{row['aggregate_s'] * 1e3:.2f} | {row['verify_s'] * 1e3:.1f} | {runs} | "
                       f"{row.get('verify_cpu_s', float('nan')) * 1e3:.1f} |")
    lines.append("")
  g = res.get("gpu")
  if g:
    lines += ["## GPU mode (bf16, full remat, random weights)", ""]
    if "skipped" in g:
      lines.append(f"Skipped: {g['skipped']}")
    else:
      s = g["shape"]
      lines += [f"{g['device_kind']}{' (dry run: tiny shape on CPU)' if g['dry_run'] else ''}; "
                f"C={s['clients']} K={s['local_steps']} B={s['batch']} S={s['seq']} "
                f"r={s['rank']}; MFU on the 4N basis against a measured bf16 matmul of "
                f"{g['matmul_peak']['peak_flops'] / 1e12:.1f} TFLOP/s.", "",
                "| preset | variant | s/round | tokens/s | MFU | compile s | device peak GiB |",
                "|---|---|---|---|---|---|---|"]
      for row in g["rows"]:
        if "skipped" in row:
          lines.append(f"| {row['preset']} | {row['variant']} | skipped: "
                       f"{row['skipped'].splitlines()[0][:80]} | | | | |")
          continue
        dm = row.get("device_memory") or {}
        lines.append(f"| {row['preset']} | {row['variant']} | {row['median_s']:.3f} | "
                     f"{row['tokens_per_s']:.0f} | {_f(row.get('mfu'), '{:.1%}')} | "
                     f"{row['compile_s']:.1f} | "
                     f"{_f(dm.get('peak_bytes_in_use', 0) / 2**30, '{:.1f}')} |")
    lines.append("")
  if res.get("ablation"):
    lines += ablation_lines(res["ablation"])
  if res.get("quantize"):
    lines += quantize_lines(res["quantize"])
  if res.get("compile"):
    lines += compile_lines(res["compile"])
  if res.get("profile"):
    lines += profile_lines(res["profile"])
  if res.get("memory"):
    lines += memory_lines(res["memory"])
  if res.get("decode"):
    lines += decode_lines(res["decode"])
  if res.get("notes"):
    lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
  return "\n".join(lines)


DP_HEADING = "## Example-level DP-SGD: a round with vs without"


def dp_lines(dp: dict[str, Any]) -> list[str]:
  """The DP section: a round's tokens/s with and without DP-SGD, measured in one invocation
  (a dp-only run also records its date, command and load average)."""
  s = dp["shape"]
  lines = [DP_HEADING, ""]
  if "date" in dp:
    lines += [f"Measured on {dp['date']} (command: `{dp['command']}`); load average at start "
              f"{', '.join(f'{x:.2f}' for x in dp['load_average_at_start'])}, at end "
              f"{', '.join(f'{x:.2f}' for x in dp['load_average_at_end'])}: both variants run "
              "in the same process, so their ratio is the figure to read on a shared machine.",
              ""]
  lines += [f"`{dp['preset']}`, C={s['clients']} x K={s['local_steps']} x B={s['batch']} x "
            f"S={s['seq']}, r={s['rank']}, the same batches; DP-SGD with z = 1, C = 1 "
            "(per-example gradients by vmap, clipping, Gaussian noise).", "",
            "| variant | s/round (median) | tokens/s | compile s |", "|---|---|---|---|"]
  for name in ("no_dp", "dp_sgd"):
    d = dp[name]
    lines.append(f"| {name} | {d['median_s']:.3f} | {d['tokens_per_s']:.0f} | "
                 f"{d['compile_s']:.1f} |")
  lines += ["", f"DP-SGD throughput / plain: **{dp['dp_over_no_dp_tokens_per_s']:.2f}**", ""]
  return lines


MEMORY_HEADING = "## Memory: clients x model mesh (compiled, per device)"


def memory_lines(mem: dict[str, Any]) -> list[str]:
  """The memory section: XLA's per-device bytes for each mesh and client count, and fits."""
  o, gb = mem["options"], 1e9
  lines = [MEMORY_HEADING, "",
           f"`{o['preset']}` architecture (bf16 params and activations, remat), abstract shapes "
           f"only; FedAvg round of C clients x K={o['local_steps']} x B={o['batch']} x "
           f"S={o['seq']}, LoRA r={o['rank']} on all seven projections, AdamW, logits chunk "
           f"{o['logits_chunk']}; {o['devices']} forced CPU devices, mesh "
           f"`clients = {o['devices']} / model` x `model`. `jax.jit(...).lower(...).compile()"
           f".memory_analysis()` of XLA:CPU. Each point was compiled with {o['layers'][0]} and "
           f"{o['layers'][1]} decoder layers and extrapolated linearly to all {mem['depth']} "
           f"(compiling the full depth 16 times was too slow on this shared 2-core machine). "
           f"Clients per shard = C / (devices / model): the clients one device trains.", "",
           "These are XLA:CPU's buffers, not a GPU or TPU measurement: XLA:CPU converts bf16 "
           "matmul operands to float32 (a one-matmul program's temporaries are the f32 copy of "
           "its bf16 weight), so the temporaries hold f32 copies of the (per-device) weights, "
           "and its schedule keeps far more of each layer's activations live than remat "
           "implies (the JAX program does remat every layer: one `remat` per layer in the "
           "jaxpr). The arguments column (the base split over `model`, plus LoRA state and "
           "batches) is exact for any backend.", "",
           "| model | C | clients per shard | arguments GB | temporaries GB | output GB | "
           "total GB | base GB (whole) | temporaries per layer GB |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in mem["rows"]:
    lines.append(f"| {r['model']} | {r['clients']} | {r['clients_per_shard']} | "
                 f"{r['argument_bytes'] / gb:.2f} | {r['temp_bytes'] / gb:.2f} | "
                 f"{r['output_bytes'] / gb:.3f} | {r['total_bytes'] / gb:.2f} | "
                 f"{r['base_bytes'] / gb:.2f} | {r['temp_bytes_per_layer'] / gb:.3f} |")
  caps = list(mem["fits"][0]["max_clients_per_shard"])
  lines += ["", "Largest clients per shard that fit, from a line through the two client counts "
            "(total = fixed + per client x clients per shard; total = arguments + temporaries + "
            "outputs - donated aliases):", "",
            "| model | fixed GB | per client GB | " + " | ".join(f"fits {c} GB" for c in caps)
            + " |", "|---|---|---|" + "---|" * len(caps)]
  for f in mem["fits"]:
    lines.append(f"| {f['model']} | {f['fixed_bytes'] / gb:.2f} | {f['per_client_bytes'] / gb:.3f}"
                 f" | " + " | ".join(str(f["max_clients_per_shard"][c]) for c in caps) + " |")
  return lines + [""] + quantized_memory_lines(mem)


def quantized_memory_lines(mem: dict[str, Any]) -> list[str]:
  """A quantized base: exact per-device arguments per preset and format, and the compiled
  rounds over a quantized base next to the bf16 ones (clients that fit)."""
  gb, lines = 1e9, []
  args = mem.get("arguments") or []
  if args:
    c0 = min(a["clients"] for a in args)
    sizes = sorted({a["model"] for a in args})
    by = {(a["preset"], a["quantize"], a["model"]): a for a in args if a["clients"] == c0}
    lines += ["### A quantized base (`model.quantize`): arguments per device", "",
              f"Exact bytes of the round's arguments on one device for C={c0} clients, the "
              "preset's full depth (base, LoRA state and batches), counted from the shapes and "
              "the round's input shardings without compiling "
              "(`AbstractRound.argument_bytes_per_device`, equal to XLA's "
              "`argument_size_in_bytes` wherever both were measured). Only the seven "
              "projections are quantized (blocks of 64 input columns, float32 scales: 8.5 or "
              "4.5 bits a weight); embeddings, LM head and norms stay bf16.", "",
              "| preset | base | " + " | ".join(f"model={m} GB" for m in sizes)
              + " | base GB (whole) | base vs bf16 |", "|---|---|" + "---|" * (len(sizes) + 2)]
    for preset in dict.fromkeys(a["preset"] for a in args):
      ref = by[(preset, "none", sizes[0])]["base_bytes"]
      for q in dict.fromkeys(a["quantize"] for a in args):
        row = [by[(preset, q, m)] for m in sizes]
        lines.append(f"| {preset} | {'bf16' if q == 'none' else q} | "
                     + " | ".join(f"{r['argument_bytes'] / gb:.2f}" for r in row)
                     + f" | {row[0]['base_bytes'] / gb:.2f} | {row[0]['base_bytes'] / ref:.2f} |")
    lines.append("")
  for q, sub in (mem.get("quantized") or {}).items():
    caps = list(sub["fits"][0]["max_clients_per_shard"])
    bf16 = {f["model"]: f for f in mem["fits"]}
    lines += [f"### Compiled rounds over the {q} base", "",
              f"As the table above (same shapes, XLA:CPU, {sub['options']['layers'][0]} and "
              f"{sub['options']['layers'][1]} layers extrapolated to {sub['depth']}), with the "
              f"`{sub['options']['preset']}` base in {q}. Measured {sub.get('date', '?')} "
              f"(load average {', '.join(f'{x:.1f}' for x in sub.get('load_average_at_end', []))}"
              " at the end):", "",
              "| model | C | clients per shard | arguments GB | temporaries GB | output GB | "
              "total GB |", "|---|---|---|---|---|---|---|"]
    for r in sub["rows"]:
      lines.append(f"| {r['model']} | {r['clients']} | {r['clients_per_shard']} | "
                   f"{r['argument_bytes'] / gb:.2f} | {r['temp_bytes'] / gb:.2f} | "
                   f"{r['output_bytes'] / gb:.3f} | {r['total_bytes'] / gb:.2f} |")
    same = {(p["layers"], p["clients"], p["model"]): p["temp_bytes"] for p in mem["compiled"]}
    diffs = [p["temp_bytes"] - same[k] for p in sub["compiled"]
             if (k := (p["layers"], p["clients"], p["model"])) in same]
    if diffs and not any(diffs):
      lines += ["", f"The temporaries equal the bf16 rounds' to the byte at all {len(diffs)} "
                "compiled points: on XLA:CPU the base's storage changes the arguments only (and "
                "these temporaries, f32 copies of the weights and a generous schedule, are the "
                "CPU caveat above: the GPU figure is `scripts/gpu_check.sh`'s)."]
    elif diffs:
      lines += ["", f"Temporaries minus the bf16 rounds' at the compiled points (GB): "
                + ", ".join(f"{d / gb:+.3f}" for d in diffs) + "."]
    lines += ["", "Largest clients per device (per shard) that fit, bf16 base vs " + q + ":", "",
              "| model | base | fixed GB | per client GB | "
              + " | ".join(f"fits {c} GB" for c in caps) + " |",
              "|---|---|---|---|" + "---|" * len(caps)]
    for f in sub["fits"]:
      for name, g in (("bf16", bf16.get(f["model"])), (q, f)):
        if g is not None:
          lines.append(f"| {f['model']} | {name} | {g['fixed_bytes'] / gb:.2f} | "
                       f"{g['per_client_bytes'] / gb:.3f} | " + " | ".join(
                           str(g["max_clients_per_shard"].get(c, "-")) for c in caps) + " |")
    lines.append("")
  return lines


ABLATION_HEADING = "## Ablation: the speed options (CPU)"


def _variants_lines(a: dict[str, Any], heading: str, intro: str, overrides: bool) -> list[str]:
  """A section of engine timings of variants against the first (`suite.ablation_section`)."""
  first = next(iter(a["variants"]))
  lines = [heading, "",
           intro + (f" Measured {a['date']}: `{a['command']}`, load average "
                    f"{', '.join(f'{x:.1f}' for x in a['load_average_at_end'])} at the end."
                    if a.get("date") else ""), "",
           f"| variant |{' overrides |' if overrides else ''} s/round (median) | tokens/s | "
           f"vs {first} | compile s |", "|---|" + "---|" * (5 if overrides else 4)]
  for name, d in a["variants"].items():
    cells = [name] + ([", ".join(f"{k}={v}" for k, v in d["overrides"].items())] if overrides
                      else [])
    cells += [f"{d['median_s']:.3f}", f"{d['tokens_per_s']:.0f}",
              f"{d[f'tokens_per_s_over_{first}']:.2f}x", f"{d['compile_s']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return lines + [""]


def _shape_text(a: dict[str, Any]) -> str:
  sh = a["shape"]
  return (f"`{a['preset']}`, C={sh['clients']} x K={sh['local_steps']} x B={sh['batch']} x "
          f"S={sh['seq']}, r={sh['rank']}")


def ablation_lines(a: dict[str, Any]) -> list[str]:
  """The ablation section: engine tokens/s of each speed option against the baseline."""
  return _variants_lines(a, ABLATION_HEADING, (
      f"Each speed option on vs off in one process, rounds of all variants timed in turns "
      f"({_shape_text(a)}); the variants train identically (asserted by "
      f"`tests/test_benchmarks.py`)."), overrides=True)


QUANTIZE_HEADING = "## A quantized base: round speed (CPU)"


def quantize_lines(a: dict[str, Any]) -> list[str]:
  """The quantize section: engine tokens/s over the base stored in each format (`QUANTIZED`)."""
  return _variants_lines(a, QUANTIZE_HEADING, (
      f"The same random float weights stored as each format (`model.quantize`, blocks of 64) "
      f"and dequantized inside each matmul, rounds of all variants timed in turns in one "
      f"process ({_shape_text(a)}). On CPU the dequantization is extra work; what "
      f"quantization buys is memory (above)."), overrides=False)


COMPILE_HEADING = "## Compile time: one round from abstract shapes"


def compile_lines(c: dict[str, Any]) -> list[str]:
  """The compile section: trace + lower and compile seconds of each variant."""
  k, b, seq = c["shape"]
  lines = [COMPILE_HEADING, "",
           f"`{c['preset']}` architecture, bf16, {c['clients']} clients x K={k} x B={b} x "
           f"S={seq}, LoRA r={c['rank']} on all projections, full remat, no weights "
           f"(`jax.jit(...).lower(...).compile()` for {c['backend']}, {c.get('cpu_count')} cores). "
           f"Compile CPU time is the steadier figure on a shared machine."
           + (f" Measured {c['date']}: `{c['command']}`, load average "
              f"{', '.join(f'{x:.1f}' for x in c['load_average_at_end'])} at the end."
              if c.get("date") else ""), "",
           "| variant | layers | trace + lower s | compile s (wall) | compile s (CPU) |",
           "|---|---|---|---|---|"]
  lines += [f"| {r['variant']} | {r['layers']} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | "
            f"{r['compile_cpu_s']:.1f} |" for r in c["rows"]]
  return lines + [""]


PROFILE_HEADING = "## Profile: where a CPU round's time goes"


def profile_lines(p: dict[str, Any]) -> list[str]:
  """The profile section: op seconds of one engine round by kind, and the top ops."""
  sh = p["shape"]
  lines = [PROFILE_HEADING, "",
           f"One warm engine round of `{p['preset']}` (C={sh['clients']} x K={sh['local_steps']} x "
           f"B={sh['batch']} x S={sh['seq']}, r={sh['rank']}, logits_chunk={p['logits_chunk']}) "
           f"under `jax.profiler.trace`; every executed XLA op attributed by the dots it contains "
           f"(`fedlora_jax/benchmarks/profile.py`). Round wall time {p['round_wall_s']:.2f} s; op "
           f"time summed over the threads {p['op_s_total']:.2f} s."
           + (f" Measured {p['date']}: `{p['command']}`, load average "
              f"{', '.join(f'{x:.1f}' for x in p['load_average_at_end'])} at the end."
              if p.get("date") else ""), "",
           "| kind | op s | share | ops |", "|---|---|---|---|"]
  lines += [f"| {k} | {v['s']:.2f} | {v['share']:.1%} | {v['ops']} |"
            for k, v in p["kinds"].items()]
  lines += ["", "| top op | s | kind | its dots (JAX op names) |", "|---|---|---|---|"]
  lines += [f"| {r['op']} | {r['s']:.3f} | {r['kind']} | {'; '.join(r['dots'])} |"
            for r in p["top_ops"]]
  return lines + [""]


DECODE_HEADING = "## Decode: KV-cached generation vs transformers generate"


def decode_lines(d: dict[str, Any]) -> list[str]:
  """The decode section: tokens/s per decoder and batch, then the many-adapter batch."""
  lines = [DECODE_HEADING, "",
           f"`{d['preset']}` ({d['layers']} layers, {d['dtype']}, {d['backend']}), random weights, "
           f"LoRA r={d['rank']} on all projections, prompt {d['prompt_len']} tokens, "
           f"{d['new_tokens']} new tokens per row (greedy, no stop), prefill included; medians "
           f"of timed calls after a first (compiling) call (`fedlora_jax/benchmarks/decode.py`); "
           f"the process on {d.get('cpus', '?')} CPU(s), XLA_FLAGS `{d.get('xla_flags', '')}`"
           + (f", transformers on {d['torch_threads']} thread(s)" if "torch_threads" in d else "")
           + "."
           + (f" Measured {d['date']}: `{d['command']}`, load average "
              f"{', '.join(f'{x:.1f}' for x in d['load_average_at_end'])} at the end."
              if d.get("date") else ""), "",
           "| decoder | batch | tokens/s | s per call | first call s |", "|---|---|---|---|---|"]
  lines += [f"| {r['name']} | {r['batch']} | {r['tokens_per_s']:.0f} | {r['median_s']:.3f} | "
            f"{r['first_call_s']:.1f} |" for r in d["rows"]]
  if "tokens_equal_to_torch" in d:
    lines += ["", "Rows whose greedy tokens equal transformers': " + ", ".join(
        f"batch {b}: {f:.2f}" for b, f in d["tokens_equal_to_torch"].items()) + "."]
  lines += ["", f"Rows using {d['adapters']} different adapters (row i uses adapter i mod "
            f"{d['adapters']}); the one-call tokens equal the loop's: "
            f"{'yes' if d['many_equals_loop'] else 'NO'}.", "",
            "| decoder | batch | tokens/s | s per call | first call s |", "|---|---|---|---|---|"]
  lines += [f"| {r['name']} | {r['batch']} | {r['tokens_per_s']:.0f} | {r['median_s']:.3f} | "
            f"{r['first_call_s']:.1f} |" for r in d["many"]]
  return lines + [""]


# Sections a run of their own writes into the existing files: key -> (heading, lines).
SECTION_WRITERS = {"ablation": (ABLATION_HEADING, ablation_lines),
                   "quantize": (QUANTIZE_HEADING, quantize_lines),
                   "dp": (DP_HEADING, dp_lines),
                   "compile": (COMPILE_HEADING, compile_lines),
                   "profile": (PROFILE_HEADING, profile_lines),
                   "memory": (MEMORY_HEADING, memory_lines),
                   "decode": (DECODE_HEADING, decode_lines)}


def splice_section(markdown_text: str, heading: str, section: list[str]) -> str:
  """Replaces the `heading` block (up to the next "## ") of a markdown text, or inserts it before
  "## Notes" (or at the end), leaving every other section as it is."""
  lines = markdown_text.rstrip("\n").split("\n")
  if heading in lines:
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
  else:
    start = end = lines.index("## Notes") if "## Notes" in lines else len(lines)
  return "\n".join(lines[:start] + section + lines[end:]) + "\n"
