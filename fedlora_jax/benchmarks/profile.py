"""Where a round's time goes: a JAX profiler trace of one engine round, by kind of XLA op.

One round runs under `jax.profiler.trace` (perfetto trace); each executed XLA op (a fusion) is
attributed by the dots it contains, read from the round's optimized HLO: each dot's JAX op name
names the einsum of `models/` it came from (forward or its transpose), so the kinds are the
frozen base projections, attention, LoRA, the LM head, another matmul (e.g. the FedAvg mean), or
no matmul (elementwise ops, reductions, copies).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp

from fedlora_jax import models
from fedlora_jax.benchmarks import jax_round
from fedlora_jax.benchmarks.data import RoundShape, client_batches

KINDS = ("base projections", "attention", "LoRA", "LM head", "other matmul", "no matmul")
_NOT_OPS = ("ThunkExecutor", "$", "Slinky", "while", "PjRt", "Execute", "conditional")


def _computations(hlo: str) -> tuple[dict[str, list[str]], dict[str, str]]:
  """({computation: its lines}, {instruction: its right-hand side}) of an HLO module's text."""
  comps: dict[str, list[str]] = {}
  instr: dict[str, str] = {}
  current = None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      current = head.group(1)
      comps[current] = []
      continue
    if current is None:
      continue
    comps[current].append(line)
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
    if m:
      instr[m.group(1)] = m.group(2)
  return comps, instr


def dot_names(op: str, comps, instr) -> list[str]:
  """The `op_name`s (JAX source of each dot, e.g. "transpose(jvp(...i,ri->...r))/dot_general")
  of the dots inside `op` and its called computations, two deep."""
  names, todo, seen = [], [instr.get(op, "")], set()
  for _ in range(3):
    nxt = []
    for line in todo:
      if " dot(" in line:
        m = re.search(r'op_name="([^"]*)"', line)
        names.append(m.group(1) if m else "dot")
      for callee in re.findall(r"calls=%?([\w.\-]+)", line):
        if callee not in seen:
          seen.add(callee)
          nxt.extend(comps.get(callee, []))
    todo = nxt
  return names


# The einsums of models/ (lora.py, attention.py, functional.py) that each kind's dots come from.
# An op holding dots of several kinds counts as the first (the costlier): a base projection fused
# with its LoRA branch is a base projection.
_KIND_OF_EINSUM = (("LM head", ("cd,vd->cv", "cv,vd->cd", "cv,cd->vd")),
                   ("attention", ("BTNH,BSNH->BNTS", "BNTS,BSNH->BTNH")),
                   ("base projections", ("...i,oi->...o",)),
                   ("LoRA", ("...i,ri->...r", "...r,or->...o")))


def kind_of(dot_op_names: list[str]) -> str:
  """The kind (one of KINDS) of an op from the JAX op names of its dots."""
  if not dot_op_names:
    return "no matmul"
  text = " ".join(dot_op_names)
  for kind, einsums in _KIND_OF_EINSUM:
    if any(e in text for e in einsums):
      return kind
  return "other matmul"


def op_times(trace_dir: str) -> dict[str, float]:
  """{XLA op name: summed seconds} from the perfetto trace under `trace_dir`."""
  files = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))
  if not files:
    raise RuntimeError(f"no perfetto trace written under {trace_dir}")
  with gzip.open(files[-1]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  out: collections.Counter = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and "dur" in e and not str(e["name"]).startswith(_NOT_OPS):
      out[e["name"]] += e["dur"] * 1e-6
  return dict(out)


def profile_round(preset: str, shape: RoundShape, *, logits_chunk: int,
                  top: int = 12) -> dict[str, Any]:
  """Seconds of one (compiled, warm) engine round by op kind, and its `top` ops."""
  cfg = models.preset(preset)
  setup = jax_round.build(cfg, shape.rank)
  batches = {k: jnp.asarray(v) for k, v in client_batches(shape, cfg.vocab_size).items()}
  fr, state, base, ids, counts = jax_round.engine(
      setup, shape, jax_round.local_training(shape, logits_chunk=logits_chunk))
  hlo = fr.lower(state, base, batches, ids, counts).compile().as_text()
  comps, instr = _computations(hlo)
  for _ in range(2):  # compile, then one warm round
    state = jax.block_until_ready(fr(state, base, batches, ids, counts)[0])
  with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    with jax.profiler.trace(d, create_perfetto_trace=True):
      state = jax.block_until_ready(fr(state, base, batches, ids, counts)[0])
    wall = time.perf_counter() - t
    times = op_times(d)
  by_kind = dict.fromkeys(KINDS, 0.0)
  ops = dict.fromkeys(KINDS, 0)
  rows = []
  for op, s in times.items():
    names = dot_names(op, comps, instr)
    kind = kind_of(names)
    by_kind[kind] += s
    ops[kind] += 1
    rows.append({"op": op, "s": s, "kind": kind,
                 "dots": sorted({n.rsplit("closed_call/", 1)[-1] for n in names})[:3]})
  total = sum(by_kind.values())
  return {"preset": preset, "shape": shape.__dict__, "logits_chunk": logits_chunk,
          "round_wall_s": wall, "op_s_total": total,
          "kinds": {k: {"s": by_kind[k], "share": by_kind[k] / total if total else 0.0,
                        "ops": ops[k]} for k in KINDS},
          "top_ops": sorted(rows, key=lambda r: -r["s"])[:top]}
