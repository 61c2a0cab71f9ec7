"""report.md with PNG plots: per-client accuracy over rounds, worst-client and harmonic-mean
curves, the model x client-test-set heatmap, and for DP runs the privacy spent (epsilon per
round)."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedlora_jax.eval.protocols import score  # noqa: E402
from fedlora_jax.run.workdir import MetricsLog  # noqa: E402


def _plot_curves(records: list[dict[str, Any]], path: str) -> None:
  evals = [r for r in records if "accuracy" in r]
  rounds = [r["round"] for r in evals]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for name in evals[0]["accuracy"]:
    ax1.plot(rounds, [r["accuracy"][name] for r in evals], marker=".", label=name)
  ax1.set(title="Per-client test accuracy", xlabel="round", ylabel="accuracy")
  ax1.legend(fontsize=8)
  for key, label in (("mean", "mean"), ("min", "worst client"), ("harmonic_mean", "harmonic mean")):
    ax2.plot(rounds, [r["summary"][key] for r in evals], marker=".", label=label)
  ax2.set(title="Fairness over rounds", xlabel="round", ylabel="accuracy")
  ax2.legend(fontsize=8)
  for ax in (ax1, ax2):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_heatmap(summary: dict[str, Any], path: str) -> None:
  m = np.asarray(summary["matrix"])
  cols = list(summary["accuracy"])
  fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2, 0.6 * len(m) + 1.8))
  im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
  ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
  ax.set_yticks(range(len(m)), summary["matrix_rows"])
  for i in range(m.shape[0]):
    for j in range(m.shape[1]):
      ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center",
              color="white" if m[i, j] < 0.6 else "black", fontsize=8)
  ax.set(title="Accuracy: model (row) x client test set (column)")
  fig.colorbar(im, ax=ax, fraction=0.03)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# (privacy) The privacy spent, from the metrics records' "privacy" entries (run/loop.py).
UNITS = {"example": "one training record in a hospital's training data (a patient with k "
                    "records is protected at up to k times this epsilon)",
         "client": "one whole hospital's participation"}
SMALL_FEDERATION = 100  # client level below this many hospitals: say the guarantee is weak


def noise_words(z: float | list[float], names: list[str]) -> str:
  """"noise multiplier 1.2", or each hospital's when calibrated per hospital."""
  if isinstance(z, list):
    return "noise multiplier per hospital " + ", ".join(f"{h} {x:.4g}" for h, x in zip(names, z))
  return f"noise multiplier {z:.4g}"


def _privacy_lines(records: list[dict[str, Any]], num_hospitals: int) -> list[str]:
  """The privacy section: epsilon spent, what it protects, and epsilon after every round."""
  spent = [r for r in records if "privacy" in r]
  if not spent:
    return []
  last = spent[-1]["privacy"]
  eps = last["epsilon"]
  level, worst = last["level"], max(eps.values())
  lines = ["## Privacy", ""]
  if "guarantee" in last:
    lines += [f"**{last['guarantee'].capitalize()}** (`privacy.reproducible_noise=True`, a "
              "research setting): anyone holding config.json can regenerate and subtract the "
              "noise; the epsilon below is what the noise would buy if it were secret.", ""]
  lines += [f"{level.capitalize()}-level differential privacy: **epsilon = {worst:.3g} at delta = "
           f"{last['delta']:.3g}** after round {spent[-1]['round']} (unit protected: "
           f"{UNITS[level]}; {noise_words(last['noise_multiplier'], list(eps))}, clip norm "
           f"{last['clip_norm']:.4g}, dp-accounting {last['accountant']} accountant).", ""]
  if "epsilon_participants_known" in last:
    known = max(last["epsilon_participants_known"].values())
    lines += ["That epsilon credits amplification by Poisson client sampling (drawn with the "
              "server's secret): it holds against whoever sees only the released adapters. "
              "metrics.jsonl and the ledger publish each round's participants; against their "
              f"readers a client has **epsilon = {known:.3g}** (the rounds it took part in, "
              "unamplified).", ""]
  if level == "example":
    lines += ["Epsilon per hospital: " + ", ".join(f"{h} {e:.3g}" for h, e in eps.items())
              + " (the largest is the run's guarantee; the ledger block records it).", ""]
  elif num_hospitals < SMALL_FEDERATION:
    lines += [f"With {num_hospitals} hospitals this guarantee is weak: "
              "hiding a whole hospital among so few needs noise that swamps the update or gives "
              "a large epsilon. It says nothing about individual patients' records.", ""]
  lines += ["| round | " + " | ".join(str(r["round"]) for r in spent) + " |",
            "|---|" + "---|" * len(spent),
            "| epsilon | " + " | ".join(f"{max(r['privacy']['epsilon'].values()):.3g}"
                                       for r in spent) + " |", "",
            "![epsilon per round](epsilon_per_round.png)", ""]
  return lines


def _plot_epsilon(records: list[dict[str, Any]], path: str) -> None:
  spent = [r for r in records if "privacy" in r]
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  ax.plot([r["round"] for r in spent],
          [max(r["privacy"]["epsilon"].values()) for r in spent], marker=".")
  ax.set(title=f"Privacy spent (delta {spent[-1]['privacy']['delta']:.3g})", xlabel="round",
         ylabel="epsilon (largest over hospitals)")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_compare(data: dict[str, Any], path: str) -> None:
  """Per-method worst-client and harmonic-mean accuracy (mean ± std over seeds) under each
  protocol of a `compare.json`."""
  protocols = list(data["protocols"])
  fig, axes = plt.subplots(1, len(protocols), figsize=(6.5 * len(protocols), 4.2), squeeze=False)
  for ax, p in zip(axes[0], protocols):
    d = data["protocols"][p]
    rows = list(d["rows"])
    x = np.arange(len(rows))
    for off, key, label in ((-0.2, "min", "worst client"), (0.2, "harmonic_mean", "harmonic mean")):
      mean = [d["rows"][r][key] for r in rows]
      std = [d.get("std", {}).get("rows", {}).get(r, {}).get(key, 0.0) for r in rows]
      ax.bar(x + off, mean, 0.4, yerr=std, capsize=3, label=label)
    ax.set_xticks(x, rows, rotation=30, ha="right", fontsize=8)
    _accuracy_axes(ax, title=p.replace("_", "-") + " protocol", ylabel="accuracy")
  _save(fig, f"mean ± std over seeds {data.get('seeds', '')}", path)


def _accuracy_axes(ax, **labels) -> None:
  ax.set(ylim=(0, 1), **labels)
  ax.axhline(0.25, color="gray", lw=0.8, ls=":")  # chance with 4 options
  ax.legend(fontsize=8)


def _save(fig, title: str, path: str) -> None:
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_privacy_curve(data: dict[str, Any], path: str) -> None:
  """Mean and worst-client accuracy (mean ± std over seeds) against the target epsilon, one line
  per method, the no-DP figure at the right end; from safeguard_tables.privacy_data."""
  rows = data["rows"]
  methods = list(dict.fromkeys(cell.split("/")[0] for cell in rows))
  epsilons = sorted({float(cell.split("eps ")[1]) for cell in rows if "/eps " in cell})
  x_none = 2 * max(epsilons) if epsilons else 1.0
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
  for ax, key, label in zip(axes[0], ("mean", "min"), ("mean accuracy", "worst-client accuracy")):
    for method in methods:
      cells = [(e, rows.get(f"{method}/eps {e:g}")) for e in epsilons]
      cells.append((x_none, rows.get(f"{method}/no DP")))
      cells = [(e, r) for e, r in cells if r is not None]
      ax.errorbar([e for e, _ in cells], [r[key] for _, r in cells],
                  yerr=[r["std"][key] for _, r in cells], marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ticks = epsilons + [x_none]
    ax.set_xticks(ticks, [f"{e:g}" for e in epsilons] + ["no DP"])
    ax.minorticks_off()
    _accuracy_axes(ax, xlabel="target epsilon (delta 1e-5)", ylabel=label)
  _save(fig, f"privacy vs utility, mean ± std over {data['seeds']} seed(s)", path)


def _protocol_lines(summary: dict[str, Any]) -> list[str]:
  """The final matrix scored by the paper's cross-client protocol and the own-test protocol."""
  m = np.asarray(summary["matrix"], np.float64)
  lines = ["| protocol | mean | worst | harmonic mean |", "|---|---|---|---|"]
  for protocol, label in (("cross_client", "cross-client (every model on every test set)"),
                          ("own_test", "own test set (each hospital's model)")):
    s = score(m, protocol)
    lines.append(f"| {label} | {s['mean']:.3f} | {s['min']:.3f} | {s['harmonic_mean']:.3f} |")
  if m.shape[0] > 1:
    lines += ["", "Cross-client figures of personal models are the average over the hospitals' "
              "models of each model's figures over all test sets."]
  return lines


def _generate_lines(summary: dict[str, Any]) -> list[str]:
  """eval.mode=generate: free-text accuracy next to the likelihood score, per client."""
  if "generate" not in summary:
    return []
  gen, f = summary["generate"], summary["generate"]["fairness"]
  lines = ["", "Free-text answers (eval.mode=generate, greedy, normalised exact match) next to "
           "the likelihood score (best option's answer token), own test set:", "",
           "| client | likelihood | generate |", "|---|---|---|"]
  lines += [f"| {n} | {summary['accuracy'][n]:.3f} | {gen['accuracy'][n]:.3f} |"
            for n in summary["accuracy"]]
  lines.append(f"| mean / worst / harmonic mean | {summary['fairness']['mean']:.3f} / "
               f"{summary['fairness']['min']:.3f} / {summary['fairness']['harmonic_mean']:.3f} | "
               f"{f['mean']:.3f} / {f['min']:.3f} / {f['harmonic_mean']:.3f} |")
  return lines


def write_report(workdir: str, summary: dict[str, Any]) -> str:
  records = MetricsLog.read(os.path.join(workdir, "metrics.jsonl"))
  if any("accuracy" in r for r in records):
    _plot_curves(records, os.path.join(workdir, "accuracy_curves.png"))
  _plot_heatmap(summary, os.path.join(workdir, "client_test_heatmap.png"))
  f = summary["fairness"]
  lines = [
      f"# fedlora-jax run: {summary['algorithm']}" + (" (centralized)" if summary["centralized"]
                                                     else ""),
      "",
      f"{summary['rounds']} rounds. Final accuracy per client on its own test set: mean "
      f"{f['mean']:.3f}, worst client {f['min']:.3f}, harmonic mean {f['harmonic_mean']:.3f}, "
      f"std {f['std']:.3f}.",
      "",
      "| client | train | test | dominant label (share) | own test acc | acc over all tests |",
      "|---|---|---|---|---|---|",
  ]
  for c in summary["clients"]:
    n = c["client"]
    lines.append(f"| {n} | {c['train']} | {c['test']} | {c['dominant']} ({c['dominant_share']}) "
                 f"| {summary['accuracy'][n]:.3f} | {summary['accuracy_all_tests'][n]:.3f} |")
  lines += _generate_lines(summary)
  lines += ["", *_protocol_lines(summary), "", "![accuracy curves](accuracy_curves.png)", "",
            "![client x test set](client_test_heatmap.png)", ""]
  privacy = _privacy_lines(records, sum(s.get("clinics", 1) for s in summary["clients"]))
  if privacy:
    _plot_epsilon(records, os.path.join(workdir, "epsilon_per_round.png"))
    lines += privacy
  if "ledger" in summary:
    lg = summary["ledger"]
    lines += [f"Ledger: `{os.path.basename(lg['path'])}`, {lg['blocks']} blocks, "
              f"{'valid' if lg['valid'] else 'INVALID'}; the exported adapter (digest "
              f"`{lg['adapter_digest'][:16]}…`) is recorded in block {lg['adapter_block']}.", "",
              "Trust anchors to pin (`scripts/verify_ledger.py --server_public_key=... "
              "--genesis_hash=...`):", "",
              f"- server public key: `{lg['server_public_key']}`",
              f"- genesis hash: `{lg['genesis_hash']}`", ""]
    if lg.get("base_digest"):
      lines += [f"The genesis binds the frozen base the rounds trained over (as stored, "
                f"quantized or not): digest `{lg['base_digest']}`.", ""]
  lines += [f"Adapter (PEFT format): `{os.path.relpath(summary['adapter'], workdir)}`", ""]
  q = summary.get("base_quantization")
  if q:
    lines += [f"The adapter was trained against a {q['bits']}-bit base ({q['kind']}, blocks of "
              f"{q['block_size'] or 'one row'}, {q['scale_dtype']} scales); it loads in HF PEFT "
              "over the float base, whose outputs differ from the quantized one's by the "
              "quantization error.", ""]
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as fh:
    fh.write("\n".join(lines))
  return path
