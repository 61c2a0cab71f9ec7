"""The reference paper's comparison: single-client LoRA vs federated variants vs centralized, on
the same benchmark and model, over seeds, scored by both protocols of `eval.protocols`.

`compare` runs every variant for every seed into `root/seed<s>/<variant>`, reads each run's
`summary.json` (the model x test-set `matrix`) and `correct.npz` (per-question correctness), and
writes `root/compare.{md,json,png}`:

    {"seeds": [...], "variants": [...],
     "protocols": {"cross_client" | "own_test": {
         "rows": {row: {"per_client": {hospital: acc}, "mean", "min", "harmonic_mean"}},
         "gaps_pp_vs_local": {method: {"mean", "min", "harmonic_mean"}},   # percentage points
         "std": {"rows": ..., "gaps_pp_vs_local": ...},                    # over seeds (ddof 1)
         "bootstrap_ci95_pp": {method: {metric: [lo, hi]}},                # paired, questions
         "per_seed": [{"rows": ..., "gaps_pp_vs_local": ...}, ...]}}}

Figures in "rows" and "gaps_pp_vs_local" are means over seeds. Under cross_client the
single-client row is the average of the N specialists' metrics, and "local (best specialist)" the
specialist with the highest mean accuracy over all hospitals' test sets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from fedlora_jax.eval.protocols import METRICS, PROTOCOLS, best_model, per_test_set, score
from fedlora_jax.run.workdir import config_differences, flat_config

LOCAL = "local"
BEST = "local (best specialist)"
VARIANTS: dict[str, dict[str, Any]] = {
    "local": {"fed.algorithm": "local"},
    "fedavg": {"fed.algorithm": "fedavg"},
    "fedprox": {"fed.algorithm": "fedprox"},
    "fedsa_lora": {"fed.algorithm": "fedsa_lora"},
    "ffa_lora": {"fed.algorithm": "ffa_lora"},
    "fedex_lora": {"fed.algorithm": "fedex_lora"},
    "scaffold": {"fed.algorithm": "scaffold"},
    "centralized": {"fed.algorithm": "fedavg", "fed.centralized": True},
}
DEFAULT_VARIANTS = ("local", "fedavg", "fedprox", "fedsa_lora", "ffa_lora", "fedex_lora",
                    "scaffold", "centralized")


def variant_config(base: ml_collections.ConfigDict, name: str, root: str, seed: int | None = None):
  """`base` with the variant's fields, in `root/<name>`. With `seed`, the run's seed is `seed`
  while the embedded benchmark's split and the tiny base keep `base`'s (`data.seed`): seeds
  vary LoRA init, batch order and client sampling, as fine-tuning seeds do in the paper."""
  if name not in VARIANTS:
    raise ValueError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
  cfg = ml_collections.ConfigDict(base.to_dict())
  for key, value in VARIANTS[name].items():
    section, field = key.split(".")
    cfg[section][field] = value
  if seed is not None:  # the benchmark split and tiny base stay those of the base config's seed
    cfg.data.seed = base.seed if base.data.seed < 0 else base.data.seed
    cfg.seed = seed
  cfg.workdir = os.path.join(root, name)
  return cfg


# --------------------------------------------------------------------------------- one seed


def protocol_rows(summaries: dict[str, dict[str, Any]], protocol: str) -> dict[str, Any]:
  """Rows (per-test-set accuracy and the three metrics) and gaps vs single-client LoRA."""
  rows: dict[str, dict[str, Any]] = {}
  for method, s in summaries.items():
    names = list(s["accuracy"])
    matrices = {method: np.asarray(s["matrix"], np.float64)}
    if method == LOCAL and protocol == "cross_client":
      m = matrices[method]
      matrices[BEST] = m[best_model(m)][None]
    for row, m in matrices.items():
      metrics = score(m, protocol)
      rows[row] = {"per_client": dict(zip(names, per_test_set(m, protocol).tolist())),
                   **{k: float(v) for k, v in metrics.items()}}
  gaps = {}
  if LOCAL in rows:
    gaps = {row: {k: 100.0 * (r[k] - rows[LOCAL][k]) for k in METRICS}
            for row, r in rows.items() if row not in (LOCAL, BEST)}
  return {"rows": rows, "gaps_pp_vs_local": gaps}


def compare_table(summaries: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
  """Markdown tables and JSON of both protocols for one seed's runs (method -> summary.json)."""
  data = {"protocols": {p: protocol_rows(summaries, p) for p in PROTOCOLS}}
  return _markdown(data), data


# ----------------------------------------------------------------------------------- seeds


def aggregate_seeds(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Mean and std (ddof 1; 0 for one seed) over seeds of every row figure and gap."""
  out: dict[str, Any] = {"protocols": {}}
  for p in PROTOCOLS:
    runs = [d["protocols"][p] for d in per_seed]
    agg: dict[str, Any] = {}
    for part in ("rows", "gaps_pp_vs_local"):
      mean, std = {}, {}
      for row in runs[0][part]:
        mean[row], std[row] = _mean_std([r[part][row] for r in runs])
      agg[part] = mean
      agg.setdefault("std", {})[part] = std
    agg["per_seed"] = runs
    out["protocols"][p] = agg
  return out


def _mean_std(dicts: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
  mean, std = {}, {}
  for k, v in dicts[0].items():
    if isinstance(v, dict):
      mean[k], std[k] = _mean_std([d[k] for d in dicts])
    else:
      x = np.asarray([d[k] for d in dicts], np.float64)
      mean[k] = float(x.mean())
      std[k] = float(x.std(ddof=1)) if len(x) > 1 else 0.0
  return mean, std


def bootstrap_gaps(correct_by_seed: Sequence[dict[str, dict[str, np.ndarray]]], protocol: str, *,
                   draws: int = 2000, seed: int = 0,
                   baseline: str = LOCAL) -> dict[str, dict[str, list[float]]]:
  """Paired bootstrap 95% interval (pp) of each method's seed-averaged gap vs `baseline`
  (single-client LoRA unless given).

  correct_by_seed: per seed, method -> test-set name -> [M, N_t] bool. Each draw resamples every
  test set's questions with replacement (the same questions for every method of a seed: paired),
  rescores the accuracy matrices, and averages the gaps over seeds.
  """
  rng = np.random.default_rng(seed)
  gaps: dict[str, dict[str, np.ndarray]] = {}
  for runs in correct_by_seed:
    if baseline not in runs:
      raise ValueError(f"a bootstrap of gaps needs the baseline ({baseline!r}) runs")
    names = list(runs[baseline])
    weights = {t: rng.multinomial(runs[baseline][t].shape[1],
                                  np.full(runs[baseline][t].shape[1],
                                          1.0 / runs[baseline][t].shape[1]),
                                  size=draws) for t in names}  # [B, N_t] resampling counts

    def scores(correct):  # method -> {metric: [B]}
      m_bmt = np.stack([correct[t].astype(np.float64) @ weights[t].T / weights[t].sum(1)
                        for t in names], axis=-1).transpose(1, 0, 2)
      return score(m_bmt, protocol)

    base = scores(runs[baseline])
    for method, correct in runs.items():
      if method == baseline:
        continue
      s = scores(correct)
      for k in METRICS:
        gaps.setdefault(method, {}).setdefault(k, np.zeros(draws))
        gaps[method][k] += 100.0 * (s[k] - base[k]) / len(correct_by_seed)
  return {m: {k: np.percentile(v, [2.5, 97.5]).tolist() for k, v in g.items()}
          for m, g in gaps.items()}


def compare(base: ml_collections.ConfigDict, variants: Sequence[str], root: str,
            seeds: Sequence[int] | None = None, *, draws: int = 2000) -> str:
  """Runs every variant for every seed and writes `root/compare.{md,json}`; returns the markdown."""
  from fedlora_jax.run.experiment import run  # heavy imports, only when running
  from fedlora_jax.run.report import plot_compare

  seeds = [int(base.seed)] if not seeds else [int(s) for s in seeds]
  per_seed, correct_by_seed = [], []
  for s in seeds:
    seed_root = os.path.join(root, f"seed{s}")
    summaries = {}
    for v in variants:
      cfg = variant_config(base, v, seed_root, s)
      summaries[v] = finished_summary(cfg) or run(cfg)
    per_seed.append(compare_table(summaries)[1])
    correct_by_seed.append({v: load_correct(os.path.join(seed_root, v)) for v in variants})
  data = aggregate_seeds(per_seed)
  if LOCAL in variants:
    for p in PROTOCOLS:
      data["protocols"][p]["bootstrap_ci95_pp"] = bootstrap_gaps(correct_by_seed, p, draws=draws)
  data = {"seeds": seeds, "variants": list(variants), "rounds": base.fed.rounds, **data}
  md = (f"# Single-client LoRA vs federated vs centralized ({base.fed.rounds} rounds, seeds "
        f"{', '.join(map(str, seeds))})\n\n" + _markdown(data))
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "compare.md"), "w") as f:
    f.write(md)
  with open(os.path.join(root, "compare.json"), "w") as f:
    json.dump(data, f, indent=1)
  plot_compare(data, os.path.join(root, "compare.png"))
  return md


def finished_summary(cfg) -> dict[str, Any] | None:
  """The summary of a finished run of exactly this config in its workdir (None otherwise), so a
  comparison continues where an interrupted one stopped without evaluating finished runs again."""
  paths = [os.path.join(cfg.workdir, n) for n in ("config.json", "summary.json", "correct.npz")]
  if not all(os.path.exists(p) for p in paths):
    return None
  with open(paths[0]) as f:
    if config_differences(json.load(f), flat_config(cfg)):
      return None  # run() refuses the workdir with a clear error
  with open(paths[1]) as f:
    return json.load(f)


def load_correct(workdir: str) -> dict[str, np.ndarray]:
  path = os.path.join(workdir, "correct.npz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: the run predates per-question correctness; "
                            "delete the run directory and compare again")
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


# -------------------------------------------------------------------------------- markdown

_TITLES = {
    "cross_client": ("Cross-client protocol (the paper's): every model on every hospital's test "
                     "set; a personalised method's figures are the average over its models."),
    "own_test": ("Own-test protocol (personalised): each hospital's model on its own test set "
                 "(a shared model is scored as under cross-client)."),
}


def _cell(x: float, sd: float | None, scale: float = 100.0, signed: bool = False) -> str:
  fmt = "{:+.1f}" if signed else "{:.1f}"
  text = fmt.format(scale * x)
  return text if sd is None else f"{text} ± {scale * sd:.1f}"


def _markdown(data: dict[str, Any]) -> str:
  lines: list[str] = []
  for p in PROTOCOLS:
    d = data["protocols"][p]
    std = d.get("std") if len(d.get("per_seed", ())) > 1 else None  # no "± 0" for one seed
    rows = d["rows"]
    names = list(next(iter(rows.values()))["per_client"])
    lines += [f"## {_TITLES[p]}", "", "Accuracy (%)" + (" mean ± std over seeds" if std else "")
              + ".", "",
              "| method | " + " | ".join(names) + " | mean | worst | harmonic mean |",
              "|" + "---|" * (len(names) + 4)]
    for row, r in rows.items():
      sd = std["rows"][row] if std else None
      cells = [_cell(r["per_client"][n], sd["per_client"][n] if sd else None) for n in names]
      cells += [_cell(r[k], sd[k] if sd else None) for k in METRICS]
      lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if d["gaps_pp_vs_local"]:
      ci = d.get("bootstrap_ci95_pp", {})
      lines += ["", "Gaps against single-client LoRA (percentage points"
                + ("; [paired bootstrap 95% interval over test questions]" if ci else "") + "):",
                "", "| method | mean | worst client | harmonic mean |", "|---|---|---|---|"]
      for method, g in d["gaps_pp_vs_local"].items():
        sd = std["gaps_pp_vs_local"][method] if std else None
        cells = []
        for k in METRICS:
          c = _cell(g[k], sd[k] if sd else None, scale=1.0, signed=True)
          if method in ci:
            c += f" [{ci[method][k][0]:+.1f}, {ci[method][k][1]:+.1f}]"
          cells.append(c)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines) + "\n"
