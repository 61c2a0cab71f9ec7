"""The profile section: op attribution by dot shapes, and a traced round's op times add up."""

import pytest

from fedlora_jax.benchmarks import report
from fedlora_jax.benchmarks.data import RoundShape
from fedlora_jax.benchmarks.profile import KINDS, _computations, _dot_shapes, kind_of, profile_round

HLO = """HloModule m

%fused_head (p0: f32[384,256], p1: f32[8192,256]) -> f32[384,8192] {
  %p0 = f32[384,256]{1,0} parameter(0)
  %p1 = f32[8192,256]{1,0} parameter(1)
  ROOT %dot.1 = f32[384,8192]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={1}
}

%fused_add (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  ROOT %add.1 = f32[4]{0} add(%a, %a)
}

ENTRY %main (x: f32[384,256], w: f32[8192,256]) -> f32[384,8192] {
  %x = f32[384,256]{1,0} parameter(0)
  %w = f32[8192,256]{1,0} parameter(1)
  %ynn_fusion.3 = f32[384,8192]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_head
  ROOT %add_fusion = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_add
}
"""


def test_ops_are_attributed_by_the_shapes_of_their_dots():
  comps, instr = _computations(HLO)
  assert _dot_shapes("ynn_fusion.3", comps, instr) == [[384, 8192]]
  assert _dot_shapes("add_fusion", comps, instr) == []
  kind = lambda shapes: kind_of(shapes, vocab=8192, rank=16, seq=128)
  assert kind([[384, 8192]]) == "LM head"
  assert kind([[3072, 16]]) == "LoRA"
  assert kind([[6, 4, 8, 128, 128]]) == "attention"
  assert kind([[3072, 704]]) == "base projections"
  assert kind([]) == "no matmul"


def test_a_profiled_round_splits_its_op_time_over_the_kinds():
  p = profile_round("qwen3-tiny", RoundShape(clients=2, local_steps=1, batch=2, seq=32, rank=16),
                    logits_chunk=64, top=5)
  kinds = p["kinds"]
  assert set(kinds) == set(KINDS)
  assert sum(k["s"] for k in kinds.values()) == pytest.approx(p["op_s_total"])
  assert sum(k["share"] for k in kinds.values()) == pytest.approx(1.0)
  # Every kind of work a training round does shows up (qwen3-tiny: V=8192, r=16, S=32).
  for kind in ("LM head", "LoRA", "base projections", "no matmul"):
    assert kinds[kind]["ops"] > 0 and kinds[kind]["s"] > 0, kind
  assert len(p["top_ops"]) == 5
  assert p["top_ops"][0]["s"] >= p["top_ops"][-1]["s"]
  lines = report.profile_lines(p)
  assert lines[0] == report.PROFILE_HEADING
  assert any(line.startswith("| LM head | ") for line in lines)
