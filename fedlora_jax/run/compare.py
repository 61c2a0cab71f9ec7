"""The reference paper's comparison: single-client LoRA vs FedAvg / FedProx vs centralized, on the
same benchmark, model and seed, as one table with the federated-minus-single-client gaps."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from fedlora_jax.run.experiment import run

VARIANTS: dict[str, dict[str, Any]] = {
    "local": {"fed.algorithm": "local"},
    "fedavg": {"fed.algorithm": "fedavg"},
    "fedprox": {"fed.algorithm": "fedprox"},
    "centralized": {"fed.algorithm": "fedavg", "fed.centralized": True},
}


def variant_config(base: ml_collections.ConfigDict, name: str, root: str):
  if name not in VARIANTS:
    raise ValueError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
  cfg = ml_collections.ConfigDict(base.to_dict())
  for key, value in VARIANTS[name].items():
    section, field = key.split(".")
    cfg[section][field] = value
  cfg.workdir = os.path.join(root, name)
  return cfg


def compare_table(summaries: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
  """Markdown table and JSON: per-client accuracy, mean, min, harmonic mean; gaps vs local."""
  names = list(next(iter(summaries.values()))["accuracy"])
  head = "| method | " + " | ".join(names) + " | mean | worst | harmonic mean |"
  lines = [head, "|" + "---|" * (len(names) + 4)]
  rows = {}
  for method, s in summaries.items():
    f = s["fairness"]
    rows[method] = {"per_client": s["accuracy"], "mean": f["mean"], "min": f["min"],
                    "harmonic_mean": f["harmonic_mean"]}
    cells = [f"{100 * s['accuracy'][n]:.1f}" for n in names]
    lines.append(f"| {method} | " + " | ".join(cells) +
                 f" | {100 * f['mean']:.1f} | {100 * f['min']:.1f} | "
                 f"{100 * f['harmonic_mean']:.1f} |")
  gaps = {}
  if "local" in rows:
    lines += ["", "Gaps against single-client LoRA (percentage points):", "",
              "| method | mean | worst client | harmonic mean |", "|---|---|---|---|"]
    for method, row in rows.items():
      if method == "local":
        continue
      g = {k: 100 * (row[k] - rows["local"][k]) for k in ("mean", "min", "harmonic_mean")}
      gaps[method] = g
      lines.append(f"| {method} | {g['mean']:+.1f} | {g['min']:+.1f} | "
                   f"{g['harmonic_mean']:+.1f} |")
  return "\n".join(lines) + "\n", {"rows": rows, "gaps_pp_vs_local": gaps}


def compare(base: ml_collections.ConfigDict, variants: Sequence[str], root: str) -> str:
  """Runs every variant into `root/<variant>` and writes `root/compare.{md,json}`."""
  summaries = {v: run(variant_config(base, v, root)) for v in variants}
  table, data = compare_table(summaries)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "compare.md"), "w") as f:
    f.write(f"# Single-client LoRA vs federated vs centralized ({base.fed.rounds} rounds, "
            f"seed {base.seed})\n\nAccuracy (%) of each hospital's model on its own test set.\n\n"
            + table)
  with open(os.path.join(root, "compare.json"), "w") as f:
    json.dump(data, f, indent=1)
  return table
