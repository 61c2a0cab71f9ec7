"""Where a round's time goes: a JAX profiler trace of one engine round, by kind of XLA op.

One round runs under `jax.profiler.trace` (perfetto trace); each executed XLA op (a fusion) is
attributed by the `dot`s it contains, read from the round's optimized HLO, to: the LM head
(a dimension equal to the vocabulary), LoRA (the rank), attention (two sequence-length
dimensions), the frozen base projections (any other dot), or no matmul (elementwise ops,
reductions, copies). Pick a shape whose rank, clients and sequence length differ from the model's
other dimensions, or the attribution mixes kinds.
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

KINDS = ("base projections", "attention", "LoRA", "LM head", "no matmul")
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


def _dot_shapes(op: str, comps, instr) -> list[list[int]]:
  """Shapes appearing on the `dot` lines inside `op` (its called computations, two deep)."""
  lines, todo, seen = [], [instr.get(op, "")], set()
  for _ in range(3):
    nxt = []
    for line in todo:
      if " dot(" in line or line.lstrip().startswith("dot("):
        lines.append(line)
      for callee in re.findall(r"calls=%?([\w.\-]+)", line):
        if callee not in seen:
          seen.add(callee)
          nxt.extend(comps.get(callee, []))
    todo = nxt
  text = " ".join(re.sub(r"metadata=.*", "", l) for l in lines)
  return [[int(x) for x in s.split(",") if x] for s in re.findall(r"\[([\d,]+)\]", text)]


def kind_of(shapes: list[list[int]], vocab: int, rank: int, seq: int) -> str:
  """The kind (one of KINDS) of an op whose dots have these operand / result shapes."""
  if not shapes:
    return "no matmul"
  dims = {d for s in shapes for d in s}
  if vocab in dims:
    return "LM head"
  if rank in dims:
    return "LoRA"
  if any(s.count(seq) >= 2 for s in shapes):
    return "attention"
  return "base projections"


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
    shapes = _dot_shapes(op, comps, instr)
    kind = kind_of(shapes, cfg.vocab_size, shape.rank, shape.seq)
    by_kind[kind] += s
    ops[kind] += 1
    rows.append({"op": op, "s": s, "kind": kind, "dot_shapes": shapes[:3]})
  total = sum(by_kind.values())
  return {"preset": preset, "shape": shape.__dict__, "logits_chunk": logits_chunk,
          "round_wall_s": wall, "op_s_total": total,
          "kinds": {k: {"s": by_kind[k], "share": by_kind[k] / total if total else 0.0,
                        "ops": ops[k]} for k in KINDS},
          "top_ops": sorted(rows, key=lambda r: -r["s"])[:top]}
