"""The decode benchmark section on a micro model: the many-adapter call equals the loop over
adapters, greedy tokens equal transformers + PEFT on the same weights, and the section splices
into its own heading. Slow (about 30 s on the shared 2-core machine: transformers and peft
imports, seven compilations); .ci/run runs it in its slow pass."""

import pytest

from fedlora_jax import models
from fedlora_jax.benchmarks import report

pytestmark = [pytest.mark.slow, pytest.mark.torch]

MICRO = models.preset("qwen3-tiny", vocab_size=64, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=16)


def test_decode_section_agrees_with_transformers_and_splices_its_heading():
  pytest.importorskip("peft")
  from fedlora_jax.benchmarks import decode
  micro = tuple((k, getattr(MICRO, k)) for k in (
      "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
      "num_attention_heads", "num_key_value_heads", "head_dim"))
  d = decode.decode_section(decode.DecodeOptions(batches=(1, 4), prompt_len=5, new_tokens=4,
                                                 adapters=2, rank=2, repeats=1,
                                                 model_overrides=micro), log=lambda _: None)
  assert d["many_equals_loop"]
  assert d["tokens_equal_to_torch"] == {"1": 1.0, "4": 1.0}  # same weights, greedy, fp32
  assert [(r["name"], r["batch"]) for r in d["rows"]] == [
      ("jax, LoRA unmerged", 1), ("jax, LoRA merged", 1), ("jax, LoRA unmerged", 4),
      ("jax, LoRA merged", 4), ("transformers + PEFT, LoRA unmerged", 1),
      ("transformers + PEFT, LoRA unmerged", 4)]
  for r in d["rows"] + d["many"]:
    assert r["tokens_per_s"] == pytest.approx(r["batch"] * 4 / r["median_s"])
  assert len(d["many"]) == 4
  md = report.splice_section("# Benchmarks\n\n## Notes\n\n- n\n", report.DECODE_HEADING,
                             report.decode_lines(d))
  assert md.index(report.DECODE_HEADING) < md.index("## Notes")
  assert "| jax, 2 adapters in one call | 4 |" in md
