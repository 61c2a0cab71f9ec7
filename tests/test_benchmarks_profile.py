"""The profile section: op attribution by dot shapes, and a traced round's op times add up."""

import pytest

from fedlora_jax.benchmarks import report
from fedlora_jax.benchmarks.data import RoundShape
from fedlora_jax.benchmarks.profile import KINDS, _computations, dot_names, kind_of, profile_round

HLO = """HloModule m

%fused_head (p0: f32[384,256], p1: f32[8192,256]) -> f32[384,8192] {
  %p0 = f32[384,256]{1,0} parameter(0)
  %p1 = f32[8192,256]{1,0} parameter(1)
  ROOT %dot.1 = f32[384,8192]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={1}, metadata={op_name="jit(_round)/vmap()/while/body/closed_call/cd,vd->cv/dot_general"}
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


def test_ops_are_attributed_by_the_einsums_of_their_dots():
  comps, instr = _computations(HLO)
  assert dot_names("ynn_fusion.3", comps, instr) == [
      "jit(_round)/vmap()/while/body/closed_call/cd,vd->cv/dot_general"]
  assert dot_names("add_fusion", comps, instr) == []
  assert kind_of(dot_names("ynn_fusion.3", comps, instr)) == "LM head"
  assert kind_of(["x/transpose(jvp(...r,or->...o))/dot_general"]) == "LoRA"
  assert kind_of(["x/jvp(vmap(BTNH,BSNH->BNTS))/dot_general"]) == "attention"
  assert kind_of(["x/transpose(jvp(...i,oi->...o))/dot_general"]) == "base projections"
  assert kind_of(["jit(_round)/c,c...->.../dot_general"]) == "other matmul"
  assert kind_of([]) == "no matmul"


def test_a_profiled_round_splits_its_op_time_over_the_kinds():
  p = profile_round("qwen3-tiny", RoundShape(clients=2, local_steps=1, batch=2, seq=32, rank=16),
                    logits_chunk=64, top=5)
  kinds = p["kinds"]
  assert set(kinds) == set(KINDS)
  assert sum(k["s"] for k in kinds.values()) == pytest.approx(p["op_s_total"])
  assert sum(k["share"] for k in kinds.values()) == pytest.approx(1.0)
  # Every kind of work a training round does shows up.
  for kind in ("LM head", "LoRA", "base projections", "attention", "no matmul"):
    assert kinds[kind]["ops"] > 0 and kinds[kind]["s"] > 0, kind
  assert len(p["top_ops"]) == 5
  assert p["top_ops"][0]["s"] >= p["top_ops"][-1]["s"]
  lines = report.profile_lines(p)
  assert lines[0] == report.PROFILE_HEADING
  assert any(line.startswith("| LM head | ") for line in lines)
