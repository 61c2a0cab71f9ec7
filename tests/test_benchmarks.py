"""The benchmark library on a micro shape: token and FLOP accounting against hand counts, the
three round variants agree on what they train, and the markdown renders every section."""

import numpy as np
import pytest

from fedlora_jax import models
from fedlora_jax.benchmarks import flops, jax_round, suite
from fedlora_jax.benchmarks.data import RoundShape, client_batches, trained_tokens

MICRO = models.preset("qwen3-tiny", vocab_size=64, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=16)


def test_flop_and_token_accounting_by_hand():
  # projections: q 32x32, k 32x16, v 32x16, o 32x32, gate/up/down 32x48 -> 1024+512+512+1024+3*1536
  # = 7680, plus the (tied) head 64x32 = 2048 -> 9728 base matmul params.
  assert flops.base_matmul_params(MICRO) == 9728
  # r=2: q 2*(32+32) + k 2*(32+16) + v 2*(32+16) + o 2*(32+32) + 3 * 2*(32+48) = 448 + 480
  assert flops.lora_params(MICRO, 2) == 928
  per = flops.train_flops_per_token(MICRO, 2, seq=8)
  assert per["total"] == 4 * 9728 + 6 * 928 + 12 * 1 * 8 * 2 * 16
  shape = RoundShape(clients=3, local_steps=2, batch=2, seq=8, rank=2)
  batches = client_batches(shape, 64, pad_fraction=0.5, seed=1)
  assert trained_tokens(batches) == int(batches["attention_mask"].sum()) <= shape.slots
  assert trained_tokens(client_batches(shape, 64)) == shape.slots == 3 * 2 * 2 * 8
  fit = jax_round.linear_fit([1, 2, 3, 4], [1.5, 2.5, 3.5, 4.5])
  assert fit["intercept_s"] == pytest.approx(0.5) and fit["s_per_token"] == pytest.approx(1.0)


@pytest.mark.torch
def test_round_section_on_a_micro_shape():
  shape = RoundShape(clients=2, local_steps=2, batch=2, seq=8, rank=2)
  out = suite.round_section(MICRO, shape, repeats=1, with_torch=True, peak=1e9)
  assert out["tokens_per_round"] == shape.slots
  for name in ("engine", "sequential_jax", "torch_peft"):
    row = out[name]
    assert row["tokens_per_s"] == pytest.approx(shape.slots / row["median_round_s"])
    assert row["mfu"] == pytest.approx(row["tokens_per_s"]
                                       * flops.train_flops_per_token(MICRO, 2, 8)["total"] / 1e9)
  assert out["engine_over_torch"] == pytest.approx(
      out["engine"]["tokens_per_s"] / out["torch_peft"]["tokens_per_s"])
  text = suite.markdown({"machine": {"cpu_model": "x", "cpu_count": 2}, "round": out,
                         "gpu": {"skipped": "no accelerator"}})
  assert "| engine |" in text and "| torch_peft |" in text and "no accelerator" in text
  assert np.isfinite(out["engine"]["median_round_s"])
