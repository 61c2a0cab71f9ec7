"""Robustness and privacy tables (issue 14), apart from the paper's comparison in compare.py.

  attack    clean vs one attacking hospital, for FedAvg ("mean") and each robust rule:
            mean / worst / harmonic-mean accuracy per (rule, attack)
  privacy   example-level DP-SGD at target epsilon 1, 3, 8 (delta 1e-5) vs no DP, with the noise
            multiplier calibrated for each and the largest epsilon a hospital reached
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from fedlora_jax.federated.robust import RULES
from fedlora_jax.run.compare import finished_summary
from fedlora_jax.run.experiment import run

ATTACKS = ("none", "sign_flip", "scale", "gaussian", "alie")
EPSILONS = (1.0, 3.0, 8.0)
TABLES = ("attack", "privacy")


def _variant(base: ml_collections.ConfigDict, workdir: str, **fields) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(base.to_dict())
  for key, value in fields.items():
    section, leaf = key.split("__")
    cfg[section][leaf] = value
  cfg.workdir = workdir
  return cfg


def attack_configs(base, root: str, attackers: str = "1", rules: Sequence[str] = RULES,
                   attacks: Sequence[str] = ATTACKS) -> dict[tuple[str, str], Any]:
  """(rule, attack) -> config; `attackers` is `attack.clients` (default: the first hospital)."""
  unknown = sorted(set(rules) - set(RULES)) + sorted(set(attacks) - set(ATTACKS))
  if unknown:
    raise ValueError(f"unknown rules or attacks {unknown}; rules: {', '.join(RULES)}; attacks: "
                     f"{', '.join(ATTACKS)}")
  return {(rule, kind): _variant(base, os.path.join(root, "attack", f"{rule}-{kind}"),
                                 fed__robust_rule=rule, attack__kind=kind,
                                 attack__clients=attackers if kind != "none" else "")
          for rule in rules for kind in attacks}


def privacy_configs(base, root: str) -> dict[str, Any]:
  cfgs = {"no DP": _variant(base, os.path.join(root, "privacy", "none"), privacy__level="none")}
  for eps in EPSILONS:
    cfgs[f"eps {eps:g}"] = _variant(base, os.path.join(root, "privacy", f"eps{eps:g}"),
                                    privacy__level="example", privacy__target_epsilon=eps,
                                    privacy__noise_multiplier=0.0, privacy__delta=1e-5)
  return cfgs


def _cells(summary: dict[str, Any]) -> str:
  f = summary["fairness"]
  return f"{100 * f['mean']:.1f} | {100 * f['min']:.1f} | {100 * f['harmonic_mean']:.1f}"


def attack_table(summaries: dict[tuple[str, str], dict[str, Any]]) -> str:
  """Markdown: one row per (rule, attack) with mean / worst / harmonic-mean accuracy (%)."""
  lines = ["| rule | attack | mean | worst | harmonic mean |", "|---|---|---|---|---|"]
  lines += [f"| {rule} | {kind} | {_cells(s)} |" for (rule, kind), s in summaries.items()]
  return "\n".join(lines) + "\n"


def privacy_table(results: dict[str, tuple[dict[str, Any], dict[str, Any] | None]]) -> str:
  """Markdown from label -> (summary, last metrics record's "privacy" entry or None)."""
  lines = ["| privacy | noise multiplier | max epsilon reached | mean | worst | harmonic mean |",
           "|---|---|---|---|---|---|"]
  for label, (summary, priv) in results.items():
    z = f"{priv['noise_multiplier']:.3f}" if priv else "-"
    eps = f"{max(priv['epsilon'].values()):.2f}" if priv else "-"
    lines.append(f"| {label} | {z} | {eps} | {_cells(summary)} |")
  return "\n".join(lines) + "\n"


def _last_privacy_record(workdir: str) -> dict[str, Any] | None:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return next((r["privacy"] for r in reversed(records) if "privacy" in r), None)


def safeguard_table(base: ml_collections.ConfigDict, which: str, root: str,
                    rules: Sequence[str] = RULES, attacks: Sequence[str] = ATTACKS) -> str:
  """Runs the `which` ("attack" | "privacy") grid into root/<which>/ and writes its table there;
  a finished run of the same config is read back, not run again. The attack grid is `rules` x
  `attacks`."""
  if which == "attack":
    summaries = {k: finished_summary(cfg) or run(cfg)
                 for k, cfg in attack_configs(base, root, rules=rules, attacks=attacks).items()}
    table = attack_table(summaries)
    title = "Clean vs one attacking hospital: FedAvg and robust rules (accuracy %)"
  elif which == "privacy":
    results = {}
    for label, cfg in privacy_configs(base, root).items():
      results[label] = (finished_summary(cfg) or run(cfg), _last_privacy_record(cfg.workdir))
    table = privacy_table(results)
    title = "Example-level DP-SGD: privacy vs utility (delta 1e-5, accuracy %)"
  else:
    raise ValueError(f"unknown table {which!r}; known: {', '.join(TABLES)}")
  os.makedirs(os.path.join(root, which), exist_ok=True)
  with open(os.path.join(root, which, "table.md"), "w") as f:
    f.write(f"# {title} ({base.fed.rounds} rounds, seed {base.seed})\n\n{table}")
  return table
