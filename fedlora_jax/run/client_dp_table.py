"""The client-level DP table: many clinics, Poisson client sampling, utility against epsilon, and
the round's cost against its client count, from the same runs.

The base config sets the clinics (`data.clinics`), the sampling rate q
(`privacy.client_sampling_rate`) and the rest (rounds, clipping, ...). Cells, per seed, in
`root/client_dp/seed<s>/<cell>` (a finished run of the same config is read back):

  hospitals/no DP   the base with the hospitals as clients, all of them every round (clinics 0,
                    q 0): the engine's small-federation point of the cost table
  clinics/no DP     the clinics, Poisson-sampled at rate q from the seed, FedAvg
  clinics/eps e     the clinics, DP-FedAvg, z calibrated for the amplified epsilon e at delta 1e-5
                    (clipping as the base config says: fixed, or adaptive; off without DP)

Writes `root/client_dp/table.{md,json}`: per cell mean ± std over seeds of mean / worst /
harmonic-mean accuracy over the hospitals' test sets, the gap against clinics/no DP with its
paired bootstrap 95% interval, the noise multiplier and both epsilons (amplified: against a
reader of the adapters only; participants known: against a reader of metrics or the ledger); and
per cell the round's cost: expected and realized clients, slots, seconds per round and trained
(real, unpadded) tokens per second of round wall time (rounds after the first, which compiles).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from fedlora_jax.eval.protocols import METRICS
from fedlora_jax.run.compare import bootstrap_gaps, load_correct
from fedlora_jax.run.safeguard_tables import (accuracy_cells, cell_config, finish_grids, gap_cells,
                                              mean_std)

EPSILONS = (1.0, 2.0, 4.0, 8.0)
DELTA = 1e-5
HOSPITALS = "hospitals/no DP"
NO_DP = "clinics/no DP"


def client_dp_configs(base, root: str, seed: int, epsilons: Sequence[float] = EPSILONS
                      ) -> dict[str, ml_collections.ConfigDict]:
  """cell -> its config for `seed`, in root/seed<s>/<hospitals-none | clinics-none |
  clinics-eps<e>>."""
  if not base.data.get("clinics", 0) or not base.privacy.get("client_sampling_rate", 0.0):
    raise ValueError("the client_dp table needs --config.data.clinics > 0 and "
                     "--config.privacy.client_sampling_rate > 0")
  no_dp = {"privacy.level": "none", "privacy.adaptive_clipping": False}
  out = {HOSPITALS: cell_config(base, "fedavg", root, seed, "hospitals-none",
                                {"data.clinics": 0, "privacy.client_sampling_rate": 0.0, **no_dp}),
         NO_DP: cell_config(base, "fedavg", root, seed, "clinics-none", no_dp)}
  for eps in epsilons:
    if not eps > 0:
      raise ValueError(f"target epsilon {eps:g} must be > 0")
    out[f"clinics/eps {eps:g}"] = cell_config(
        base, "fedavg", root, seed, f"clinics-eps{eps:g}",
        {"privacy.level": "client", "privacy.target_epsilon": float(eps),
         "privacy.noise_multiplier": 0.0, "privacy.delta": DELTA})
  return out


def _records(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def round_cost(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """The round's cost from a run's metrics records, rounds after the first (which compiles):
  realized clients per round, slots, median seconds per round, trained tokens per second (real
  tokens over the rounds' wall time: `round_s` ends with the metrics' device-to-host copy, so it
  holds the round's compute; `train_and_gate_s` may only hold its dispatch)."""
  rounds = [r for r in records if r["round"] >= 2 and "tokens" in r]
  if not rounds:
    raise ValueError("no round after the first records its tokens (a run before the cost fields)")
  round_s = [r["timing"]["round_s"] for r in rounds]
  return {"clients": float(np.mean([len(r["clients"]) for r in rounds])),
          "slots": float(np.mean([r["slots"] for r in rounds])),
          "s_per_round": float(np.median(round_s)),
          "tokens_per_s": float(sum(r["tokens"] for r in rounds) / sum(round_s))}


def client_dp_data(summaries: Sequence[Mapping[str, dict[str, Any]]],
                   records: Sequence[Mapping[str, list[dict[str, Any]]]],
                   expected: Mapping[str, float],
                   correct: Sequence[Mapping[str, dict[str, np.ndarray]]] | None = None, *,
                   draws: int = 2000) -> dict[str, Any]:
  """Per cell: metrics (mean, std over seeds), the gap (pp) vs clinics/no DP and its paired
  bootstrap interval, z and both epsilons (final round, mean over seeds; the participants-known
  one also its largest), and the round's cost (`round_cost`, mean over seeds).

  summaries / records / correct: per seed, cell -> summary.json / metrics records /
  correct.npz; expected: cell -> expected clients per round (q N, or m).
  """
  rows: dict[str, Any] = {}
  for cell in summaries[0]:
    row: dict[str, Any] = {"std": {}}
    for k in METRICS:
      row[k], row["std"][k] = mean_std([s[cell]["fairness"][k] for s in summaries])
    if cell != NO_DP and NO_DP in summaries[0]:
      row["gap_pp"] = {k: 100.0 * float(np.mean([s[cell]["fairness"][k] - s[NO_DP]["fairness"][k]
                                                  for s in summaries])) for k in METRICS}
    privs = [s[cell]["privacy"] for s in summaries if "privacy" in s[cell]]
    if privs:
      row["noise_multiplier"], _ = mean_std([p["noise_multiplier"] for p in privs])
      row["epsilon_amplified"], _ = mean_std([max(p["epsilon"].values()) for p in privs])
      known = [max(p["epsilon_participants_known"].values()) for p in privs]
      row["epsilon_participants_known"], _ = mean_std(known)
      row["epsilon_participants_known_max"] = float(max(known))
    costs = [round_cost(r[cell]) for r in records]
    row["cost"] = {k: float(np.mean([c[k] for c in costs])) for k in costs[0]}
    row["cost"]["expected_clients"] = float(expected[cell])
    rows[cell] = row
  if correct is not None and NO_DP in summaries[0]:
    for cell, interval in bootstrap_gaps(correct, "own_test", draws=draws,
                                         baseline=NO_DP).items():
      rows[cell]["ci95_pp"] = interval
  return {"seeds": len(summaries), "rows": rows}


def client_dp_markdown(data: dict[str, Any]) -> str:
  """Two tables: utility against epsilon, and the round's cost against its clients."""
  sd = data["seeds"] > 1
  lines = ["| clients | privacy | noise multiplier | epsilon (adapters only) | epsilon "
           "(participants known) | mean | worst | harmonic mean | Δ mean vs no DP | Δ worst | "
           "Δ harmonic mean |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for cell, r in data["rows"].items():
    who, label = cell.split("/")
    z = f"{r['noise_multiplier']:.3f}" if "noise_multiplier" in r else "-"
    amp = f"{r['epsilon_amplified']:.2f}" if "epsilon_amplified" in r else "-"
    known = (f"{r['epsilon_participants_known']:.1f} (max {r['epsilon_participants_known_max']:.1f})"
             if "epsilon_participants_known" in r else "-")
    cells = accuracy_cells(r, sd) + gap_cells(r)
    lines.append(f"| {who} | {label} | {z} | {amp} | {known} | " + " | ".join(cells) + " |")
  lines += ["", "| clients | privacy | expected clients / round | realized | slots | s / round | "
            "tokens / s |", "|---|---|---|---|---|---|---|"]
  for cell, r in data["rows"].items():
    who, label = cell.split("/")
    c = r["cost"]
    lines.append(f"| {who} | {label} | {c['expected_clients']:.1f} | {c['clients']:.1f} | "
                 f"{c['slots']:.0f} | {c['s_per_round']:.2f} | {c['tokens_per_s']:.0f} |")
  return "\n".join(lines) + "\n"


def _expected_clients(cfg: ml_collections.ConfigDict, num_hospitals: int) -> float:
  q = cfg.privacy.get("client_sampling_rate", 0.0)
  if q:
    return q * cfg.data.clinics
  return float(cfg.fed.clients_per_round or num_hospitals)


def client_dp_table(base: ml_collections.ConfigDict, root: str, seeds: Sequence[int] = (), *,
                    epsilons: Sequence[float] = EPSILONS, draws: int = 2000,
                    finished_only: bool = False) -> str:
  """Runs the grid for every seed (default: the config's) and writes its table; returns the
  markdown. `finished_only`: runs nothing; tabulates the seeds whose every cell has finished
  (ValueError when none has)."""
  from fedlora_jax.run.setup import hospital_names
  seeds = [int(s) for s in seeds] or [int(base.seed)]
  out = os.path.join(root, "client_dp")
  grids = {s: client_dp_configs(base, out, s, epsilons) for s in seeds}
  grids, summaries = finish_grids(grids, "client_dp", out, finished_only)
  seeds = list(grids)
  records = [{c: _records(cfg.workdir) for c, cfg in g.items()} for g in grids.values()]
  correct = [{c: load_correct(cfg.workdir) for c, cfg in g.items()} for g in grids.values()]
  first = next(iter(grids.values()))
  hospitals = len(hospital_names(base))
  data = client_dp_data(summaries, records,
                        {c: _expected_clients(cfg, hospitals) for c, cfg in first.items()},
                        correct, draws=draws)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "table.json"), "w") as f:
    json.dump({"rounds": base.fed.rounds, "seeds": seeds, "clinics": base.data.clinics,
               "client_sampling_rate": base.privacy.client_sampling_rate, **data}, f, indent=1)
  md = (f"# Client-level DP over {base.data.clinics} clinics, Poisson rate "
        f"{base.privacy.client_sampling_rate:g}, delta {DELTA:g}: {base.fed.rounds} rounds, seeds "
        f"{', '.join(map(str, seeds))} (accuracy %)\n\n" + client_dp_markdown(data))
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(md)
  return md
