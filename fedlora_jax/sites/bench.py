"""The `deploy` benchmark: one job across local Flower SuperNodes vs the in-process simulation.

Seconds per round (round 1, which compiles, apart from the later rounds, which hit each node's
JAX compilation cache) and the array bytes each hospital receives and sends per round, as the
two runs' own metrics.jsonl records them; plus the wall time of each whole run (process start,
enrolment, base evaluation and export included).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

import ml_collections

from fedlora_jax.run.workdir import MetricsLog

DEPLOY_HEADING = "## Deploy: Flower local deployment vs the in-process simulation"


def deploy_section(cfg: ml_collections.ConfigDict, workdir: str,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs `cfg` in the simulation and across one SuperNode per hospital, under `workdir`."""
  from fedlora_jax.run import experiment
  from fedlora_jax.sites.deploy import deploy

  out: dict[str, Any] = {"hospitals": None, "rounds": cfg.fed.rounds}
  for mode, run in (("simulation", experiment.run), ("flower", deploy)):
    job = ml_collections.ConfigDict(cfg.to_dict())
    job.workdir = os.path.join(workdir, mode)
    log(f"  {mode} ...")
    t0 = time.time()
    summary = run(job)
    wall = time.time() - t0
    records = [r for r in MetricsLog.read(os.path.join(job.workdir, "metrics.jsonl"))
               if r["round"] > 0]
    out["hospitals"] = list(summary["accuracy"])
    out[mode] = {"wall_s": round(wall, 1), "round_s": [r["seconds"] for r in records],
                 "bytes": [r.get("bytes", {}) for r in records],
                 "message_s": [_message_latency(r.get("timing", {})) for r in records]}
    log(f"    {wall:.0f} s; rounds {out[mode]['round_s']}")
  return out


def _message_latency(timing: dict[str, Any]) -> float | None:
  """Flower's message path in a round (SuperLink and SuperNode polling, the ClientApp
  processes, transfers): each message round's time minus its slowest hospital's time in its
  worker, summed over the round's train and after-round (co-sign, evaluate) messages; None
  without workers."""
  total = None
  for wall, workers in (("train_s", "worker_s"), ("after_round_s", "after_round_worker_s")):
    worker = timing.get(workers) or {}
    if worker:
      total = (total or 0.0) + timing[wall] - max(worker.values())
  return None if total is None else round(total, 3)


def _per_hospital(bytes_by_round: list[dict[str, dict[str, int]]], key: str) -> float:
  """Mean bytes per hospital per round (over every round and hospital that answered)."""
  values = [b[key] for rnd in bytes_by_round for b in rnd.values()]
  return statistics.mean(values) if values else float("nan")


def deploy_lines(res: dict[str, Any]) -> list[str]:
  """The markdown section of `deploy_section`'s figures."""
  def later(xs):  # the median of rounds 2.. (None: not measured)
    xs = [x for x in xs[1:] if x is not None]
    return f"{statistics.median(xs):.1f}" if xs else "—"

  def loads(key):
    return ", ".join(f"{x:.1f}" for x in res[key])

  sim, flw = res["simulation"], res["flower"]
  latency = flw.get("message_s", [])
  mb = 1e6
  start = (f"Load average at the start: {loads('load_average_at_start')}; "
           if "load_average_at_start" in res else "")
  end = "at the end" if start else "Load average at the end"
  rows = [f"| round 1 s (compiles) | {sim['round_s'][0]:.1f} | {flw['round_s'][0]:.1f} |",
          f"| later rounds s (median; node compilation cache) | {later(sim['round_s'])} | "
          f"{later(flw['round_s'])} |"]
  if any(x is not None for x in latency):
    without = [None if x is None else r - x for r, x in zip(flw["round_s"], latency)]
    rows += [f"| Flower's message path per later round s (median; two message rounds) | — | "
             f"{later(latency)} |",
             f"| later rounds without Flower's message path s (median) | {later(sim['round_s'])}"
             f" | {later(without)} |"]
  rows += [f"| bytes received per hospital per round (MB) | — (in process) | "
           f"{_per_hospital(flw['bytes'], 'received') / mb:.3f} |",
           f"| bytes sent per hospital per round (MB) | — (in process) | "
           f"{_per_hospital(flw['bytes'], 'sent') / mb:.3f} |",
           f"| whole run wall s (start-up, base evaluation, export) | {sim['wall_s']:.0f} | "
           f"{flw['wall_s']:.0f} |"]
  return [DEPLOY_HEADING, "",
          f"Command: `{res['command']}` ({res['date']}). Job: {res['job']}; "
          f"{len(res['hospitals'])} hospitals ({', '.join(res['hospitals'])}), "
          f"{res['rounds']} rounds. {start}{end}: "
          f"{loads('load_average_at_end')} on {os.cpu_count()} cores (the Flower processes "
          "count too); compare the two columns, measured back to back.", "",
          "| | simulation (one process) | Flower (SuperLink + one worker and SuperNode per "
          "hospital) |",
          "|---|---|---|", *rows, "",
          "A Flower round is two message rounds: the train messages, then one ledger message "
          "per hospital (the new block to co-sign, and the new global adapter to evaluate at "
          "evaluation rounds); a fresh ClientApp process per message relays it to the "
          "hospital's long-lived worker, which holds the model compiled. Flower's message path "
          "is each message round's time minus its slowest hospital's time in its worker "
          "(SuperLink and SuperNode polling, the ClientApp processes, transfers), summed over "
          "the two; the round without it is the hospitals' and the server's own work. Bytes are "
          "the arrays of the train messages (global adapter, server inputs, client state "
          "before/after, update), as the ServerApp counts them.", ""]
