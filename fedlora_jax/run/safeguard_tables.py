"""Robustness and privacy tables over seeds, apart from the paper's comparison in compare.py.

Every run goes to `root/<table>/seed<s>/<cell>` (the seed varies LoRA init, batch order and
sampling; the benchmark split and tiny base stay the base config's, as in compare.py); a finished
run of the same config is read back, never run again. Writes `root/<table>/table.{md,json}`.

  attack   FedAvg ("mean") and each robust rule, clean and under each attack at a strength where
           FedAvg breaks (ATTACK_SPECS): mean ± std over seeds of mean / worst / harmonic-mean
           accuracy, the gap against clean FedAvg with its paired bootstrap 95% interval, and the
           hospital whose own accuracy drops most against clean FedAvg.
  privacy  LoRA (FedAvg) and FFA-LoRA without DP and with example-level DP-SGD at each target
           epsilon (delta 1e-5): accuracy, the calibrated noise multiplier and the largest epsilon
           a hospital reached, mean ± std over seeds (and curve.png); optionally each cell of the
           first seed audited (privacy/audit.py: claimed epsilon next to the one-run lower bound).
           A method "<algorithm>+per_client" gives each hospital its own z for the same target
           (`privacy.calibration`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from fedlora_jax.eval.protocols import METRICS
from fedlora_jax.federated.robust import RULES
from fedlora_jax.run.compare import bootstrap_gaps, finished_summary, load_correct, variant_config

# kind -> (attack.clients, attack.scale); a scale of 0 is the kind's default (federated/attacks.py)
ATTACK_SPECS: dict[str, tuple[str, float]] = {
    "none": ("", 0.0),
    "sign_flip": ("1", 4.0),   # one attacker, u' = -4 u
    "scale": ("1", 0.0),       # one attacker, model replacement (s = the number of clients)
    "gaussian": ("2", 0.0),    # two attackers, u' ~ N(0, I)
    "alie": ("2", 0.0),        # two attackers, Baruch et al.'s z_max
}
ATTACKS = tuple(ATTACK_SPECS)
EPSILONS = (1.0, 2.0, 4.0, 8.0)
PRIVACY_METHODS = ("fedavg", "ffa_lora")
# a privacy method "<algorithm>+per_client": its DP cells calibrate each hospital's own z
# (privacy.calibration); its no-DP cell is the algorithm's own run
PER_CLIENT = "+per_client"
NO_DP = "no DP"
CLEAN = "mean/none"  # the attack table's baseline cell: FedAvg without attack
TABLES = ("attack", "privacy")


def cell_config(base: ml_collections.ConfigDict, method: str, root: str, seed: int, cell: str,
                fields: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """`base` as `method` for `seed` with `fields` ("section.leaf" -> value), in root/seed<s>/cell."""
  cfg = variant_config(base, method, os.path.join(root, f"seed{seed}"), seed)
  for key, value in fields.items():
    section, leaf = key.split(".")
    cfg[section][leaf] = value
  cfg.workdir = os.path.join(root, f"seed{seed}", cell)
  return cfg


def attack_configs(base, root: str, seed: int, rules: Sequence[str] = RULES,
                   attacks: Sequence[str] = ATTACKS) -> dict[str, ml_collections.ConfigDict]:
  """"rule/attack" -> the config of that cell for `seed`, in root/attack/seed<s>/rule-attack."""
  unknown = sorted(set(rules) - set(RULES)) + sorted(set(attacks) - set(ATTACKS))
  if unknown:
    raise ValueError(f"unknown rules or attacks {unknown}; rules: {', '.join(RULES)}; attacks: "
                     f"{', '.join(ATTACKS)}")
  out = {}
  for rule in rules:
    for kind in attacks:
      clients, scale = ATTACK_SPECS[kind]
      out[f"{rule}/{kind}"] = cell_config(
          base, "fedavg", os.path.join(root, "attack"), seed, f"{rule}-{kind}",
          {"fed.robust_rule": rule, "attack.kind": kind, "attack.clients": clients,
           "attack.scale": scale})
  return out


def privacy_configs(base, root: str, seed: int, methods: Sequence[str] = PRIVACY_METHODS,
                    epsilons: Sequence[float] = EPSILONS) -> dict[str, ml_collections.ConfigDict]:
  """"method/no DP" and "method/eps e" -> the config of that cell for `seed`; a method
  "<algorithm>+per_client" calibrates each hospital's z in its DP cells."""
  out = {}
  for method in methods:
    algorithm = method.removesuffix(PER_CLIENT)
    calibration = "per_client" if method.endswith(PER_CLIENT) else "shared"
    out[f"{method}/{NO_DP}"] = cell_config(base, algorithm, os.path.join(root, "privacy"), seed,
                                            f"{algorithm}-none", {"privacy.level": "none"})
    for eps in epsilons:
      if not eps > 0:
        raise ValueError(f"target epsilon {eps:g} must be > 0")
      out[f"{method}/eps {eps:g}"] = cell_config(
          base, algorithm, os.path.join(root, "privacy"), seed, f"{method}-eps{eps:g}",
          {"privacy.level": "example", "privacy.target_epsilon": float(eps),
           "privacy.noise_multiplier": 0.0, "privacy.delta": 1e-5,
           "privacy.calibration": calibration})
  return out


# --------------------------------------------------------------------------- from the runs


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
  x = np.asarray(xs, np.float64)
  return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def attack_data(summaries: Sequence[Mapping[str, dict[str, Any]]],
                correct: Sequence[Mapping[str, dict[str, np.ndarray]]] | None = None, *,
                draws: int = 2000) -> dict[str, Any]:
  """Per cell ("rule/attack"): each metric's mean and std over seeds and, when the grid holds
  clean FedAvg, the gap (pp) against it, its paired bootstrap 95% interval (from `correct`,
  per seed: cell -> test set -> [1, N_t] bool) and the hospital whose own accuracy drops most.

  summaries: per seed, cell -> summary.json.
  """
  cells = list(summaries[0])
  rows: dict[str, Any] = {}
  for cell in cells:
    fair = [s[cell]["fairness"] for s in summaries]
    row: dict[str, Any] = {}
    for k in METRICS:
      row[k], row.setdefault("std", {})[k] = mean_std([f[k] for f in fair])
    if CLEAN in cells and cell != CLEAN:
      row["gap_pp"] = {k: 100.0 * float(np.mean([s[cell]["fairness"][k] - s[CLEAN]["fairness"][k]
                                                  for s in summaries])) for k in METRICS}
      names = list(summaries[0][CLEAN]["accuracy"])
      drops = {h: 100.0 * float(np.mean([s[CLEAN]["accuracy"][h] - s[cell]["accuracy"][h]
                                         for s in summaries])) for h in names}
      worst = max(drops, key=drops.get)
      row["largest_drop"] = {"hospital": worst, "pp": drops[worst]}
    rows[cell] = row
  if correct is not None and CLEAN in cells:
    ci = bootstrap_gaps(correct, "own_test", draws=draws, baseline=CLEAN)
    for cell, interval in ci.items():
      rows[cell]["ci95_pp"] = interval
  return {"seeds": len(summaries), "rows": rows}


def accuracy_cells(row: Mapping[str, Any], sd: bool) -> list[str]:
  """Each metric's accuracy (%), with ± its std over seeds when `sd`."""
  return [f"{100 * row[k]:.1f}" + (f" ± {100 * row['std'][k]:.1f}" if sd else "")
          for k in METRICS]


def gap_cells(row: Mapping[str, Any]) -> list[str]:
  """Each metric's gap (pp) against the baseline cell, with its 95% interval when known ("-"
  for the baseline)."""
  if "gap_pp" not in row:
    return ["-"] * len(METRICS)
  return [f"{row['gap_pp'][k]:+.1f}" + (f" [{row['ci95_pp'][k][0]:+.1f}, "
                                         f"{row['ci95_pp'][k][1]:+.1f}]" if "ci95_pp" in row else "")
          for k in METRICS]


def finish_grids(grids: Mapping[int, Mapping[str, ml_collections.ConfigDict]], what: str,
                 where: str, finished_only: bool
                 ) -> tuple[dict[int, Any], list[dict[str, dict[str, Any]]]]:
  """(the seeds' grids, per seed: cell -> summary.json), running every unfinished cell; with
  `finished_only`, runs nothing and keeps the seeds whose every cell has finished (ValueError
  when none has)."""
  grids = dict(grids)
  if finished_only:
    seeds = list(grids)
    grids = {s: g for s, g in grids.items() if all(finished_summary(c) for c in g.values())}
    if not grids:
      raise ValueError(f"no seed of {seeds} has every {what} cell finished under {where}")
  else:
    from fedlora_jax.run.experiment import run  # heavy imports, only when running
  summaries = [{c: finished_summary(cfg) or run(cfg) for c, cfg in g.items()}
               for g in grids.values()]
  return grids, summaries


def attack_markdown(data: dict[str, Any]) -> str:
  """One row per cell: accuracy (%) mean ± std, gaps vs clean FedAvg [95% interval], and the
  hospital that pays most."""
  sd = data["seeds"] > 1
  lines = ["| rule | attack | mean | worst | harmonic mean | Δ mean | Δ worst | Δ harmonic mean "
           "| largest drop |", "|---|---|---|---|---|---|---|---|---|"]
  for cell, r in data["rows"].items():
    rule, kind = cell.split("/")
    cells = accuracy_cells(r, sd) + gap_cells(r)
    drop = r.get("largest_drop")
    cells.append(f"{drop['hospital']} {-drop['pp']:+.1f}" if drop else "-")
    lines.append(f"| {rule} | {kind} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _last_privacy_record(workdir: str) -> dict[str, Any] | None:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return next((r["privacy"] for r in reversed(records) if "privacy" in r), None)


def privacy_data(results: Sequence[Mapping[str, tuple[dict[str, Any], dict[str, Any] | None]]],
                 audits: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
  """Per cell ("method/no DP" | "method/eps e"): each metric, the noise multiplier and the
  largest epsilon a hospital reached, mean and std over seeds; with `audits` (cell ->
  audit.json of a separate run of the cell's first seed with canaries) the audited hospital's
  claimed epsilon and the one-run lower bound.

  results: per seed, cell -> (summary.json, the last metrics record's "privacy" entry or None).
  """
  rows: dict[str, Any] = {}
  for cell in results[0]:
    seeds = [r[cell] for r in results]
    row: dict[str, Any] = {"std": {}}
    for k in METRICS:
      row[k], row["std"][k] = mean_std([s["fairness"][k] for s, _ in seeds])
    privs = [p for _, p in seeds if p]
    if privs:
      zs = [p["noise_multiplier"] for p in privs]  # per hospital: the seeds' lists are equal
      row["noise_multiplier"] = zs[0] if isinstance(zs[0], list) else mean_std(zs)[0]
      row["epsilon_reached"], _ = mean_std([max(p["epsilon"].values()) for p in privs])
    if audits and cell in audits:
      row["audit"] = {k: audits[cell][k] for k in ("hospital", "claimed_epsilon",
                                                   "epsilon_lower_bound", "canaries")}
    rows[cell] = row
  return {"seeds": len(results), "rows": rows}


def privacy_markdown(data: dict[str, Any]) -> str:
  sd = data["seeds"] > 1
  audited = any("audit" in r for r in data["rows"].values())
  lines = ["| method | privacy | noise multiplier | max epsilon reached | mean | worst | "
           "harmonic mean |" + (" audit: claimed / lower bound |" if audited else ""),
           "|---|---|---|---|---|---|---|" + ("---|" if audited else "")]
  for cell, r in data["rows"].items():
    method, label = cell.split("/")
    z = r.get("noise_multiplier", "-")
    z = (f"{min(z):.3f}-{max(z):.3f}" if isinstance(z, list)
         else z if isinstance(z, str) else f"{z:.3f}")
    eps = f"{r['epsilon_reached']:.2f}" if "epsilon_reached" in r else "-"
    cells = accuracy_cells(r, sd)
    if audited:
      a = r.get("audit")
      claim = "none" if a and a["claimed_epsilon"] is None else (
          f"{a['claimed_epsilon']:.2f}" if a else "")
      cells.append(f"{a['hospital']}: {claim} / {a['epsilon_lower_bound']:.2f}" if a else "-")
    lines.append(f"| {method} | {label} | {z} | {eps} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _audits(grid: Mapping[str, ml_collections.ConfigDict], canaries: int,
            hospital: str) -> dict[str, dict[str, Any]]:
  """cell -> audit.json of `grid`'s cell trained again with `canaries` in `hospital` (in
  <cell>-audit; a finished audit is read back)."""
  from fedlora_jax.run.audit import audit
  out = {}
  for cell, cfg in grid.items():
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.workdir = cfg.workdir + "-audit"
    path = os.path.join(cfg.workdir, "audit.json")
    if not os.path.exists(path):
      audit(cfg, canaries=canaries, hospital=hospital)
    with open(path) as f:
      out[cell] = json.load(f)
  return out


def safeguard_table(base: ml_collections.ConfigDict, which: str, root: str,
                    seeds: Sequence[int] = (), *, rules: Sequence[str] = RULES,
                    attacks: Sequence[str] = ATTACKS, methods: Sequence[str] = PRIVACY_METHODS,
                    epsilons: Sequence[float] = EPSILONS, draws: int = 2000,
                    audit_canaries: int = 0, audit_hospital: str = "",
                    finished_only: bool = False) -> str:
  """Runs the `which` ("attack" | "privacy") grid for every seed (default: the config's) and
  writes its table; returns the markdown. With `audit_canaries`, every privacy cell of the first
  seed is also audited (a separate run with canaries in `audit_hospital`, default the run's
  first hospital). `finished_only`: runs nothing; the table holds the seeds whose every cell
  (and audit) has finished, and raises ValueError when none has."""
  if which not in TABLES:
    raise ValueError(f"unknown table {which!r}; known: {', '.join(TABLES)}")
  from fedlora_jax.run.report import plot_privacy_curve
  seeds = [int(s) for s in seeds] or [int(base.seed)]
  out = os.path.join(root, which)
  make = attack_configs if which == "attack" else privacy_configs
  grid_args = (rules, attacks) if which == "attack" else (methods, epsilons)
  grids = {s: make(base, root, s, *grid_args) for s in seeds}  # refuses a bad grid before runs
  grids, summaries = finish_grids(grids, which, root, finished_only)
  seeds = list(grids)
  if which == "attack":
    correct = [{c: load_correct(cfg.workdir) for c, cfg in g.items()} for g in grids.values()]
    data = attack_data(summaries, correct, draws=draws)
    md = attack_markdown(data)
    title = "FedAvg and robust rules, clean and under attack (accuracy %)"
  else:
    results = [{c: (summary, _last_privacy_record(g[c].workdir)) for c, summary in per.items()}
               for per, g in zip(summaries, grids.values())]
    first = next(iter(grids.values()))
    audits = None
    if audit_canaries and not (finished_only and not _audited(first)):
      audits = _audits(first, audit_canaries, audit_hospital)
    data = privacy_data(results, audits)
    md = privacy_markdown(data)
    title = "LoRA vs FFA-LoRA under example-level DP-SGD (delta 1e-5, accuracy %)"
    os.makedirs(out, exist_ok=True)
    plot_privacy_curve(data, os.path.join(out, "curve.png"))
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "table.json"), "w") as f:
    json.dump({"rounds": base.fed.rounds, "seeds": seeds, **data}, f, indent=1)
  md = f"# {title}: {base.fed.rounds} rounds, seeds {', '.join(map(str, seeds))}\n\n{md}"
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(md)
  return md


def _audited(grid: Mapping[str, ml_collections.ConfigDict]) -> bool:
  return all(os.path.exists(os.path.join(c.workdir + "-audit", "audit.json"))
             for c in grid.values())
