"""Benchmark library on a micro config: token counts, FLOP bookkeeping, ratios, report."""


import numpy as np
import pytest

from fedlora_jax import models
from fedlora_jax.benchmarks import data, flops, jax_round, report, suite

MICRO = models.preset("qwen3-tiny", vocab_size=64, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=16)


def test_token_counts_exclude_padding_and_prompt():
  shape = data.RoundShape(clients=3, local_steps=2, batch=2, seq=16, rank=2)
  b = data.client_batches(shape, 64, seed=1, pad_fraction=0.5, answer_tokens=4)
  assert b["input_ids"].shape == (3, 2, 2, 16)
  pad = int(np.sum(b["attention_mask"] == 0))
  assert pad > 0
  assert data.trained_tokens(b) == shape.slots - pad
  # Answer-only loss: 4 targets per row, all on real tokens.
  assert data.target_tokens(b) == 3 * 2 * 2 * 4
  assert np.all(b["attention_mask"][b["loss_mask"] > 0] == 1)
  full = data.client_batches(shape, 64)
  assert data.target_tokens(full) == shape.slots - 3 * 2 * 2  # first token never predicted


def test_flop_bookkeeping_matches_parameter_counts():
  cfg = models.preset("qwen3-tiny")
  # Tied head: the embedding matrix is counted once, as the LM head; norms are not matmuls.
  norms = cfg.num_hidden_layers * (2 * cfg.hidden_size + 2 * cfg.head_dim) + cfg.hidden_size
  assert flops.base_matmul_params(cfg) == cfg.num_params() - norms
  setup = jax_round.build(cfg, 8)
  n_lora = sum(int(x.size) for x in __import__("jax").tree.leaves(setup.lora))
  assert flops.lora_params(cfg, 8) == n_lora
  f = flops.train_flops_per_token(cfg, 8, 128)
  assert f["total"] == pytest.approx(4 * flops.base_matmul_params(cfg) + 6 * n_lora
                                     + 12 * 4 * 128 * 8 * 32)


def test_round_section_engine_sequential_torch_agree(monkeypatch):
  pytest.importorskip("torch")
  pytest.importorskip("peft")
  monkeypatch.setitem(models.PRESETS, "micro", MICRO)
  shape = data.RoundShape(clients=2, local_steps=2, batch=2, seq=8, rank=2)
  out = suite.round_section(suite.RoundOptions(preset="micro", shape=shape, repeats=2,
                                               logits_chunk=4, torch_threads=1),
                            peak_flops=1e11, log=lambda s: None)
  assert out["trained_tokens"] == shape.slots
  for name in ("engine", "sequential_jax", "torch_peft"):
    d = out[name]
    assert len(d["round_s"]) == 2 and d["median_s"] > 0
    assert d["tokens_per_s"] == pytest.approx(shape.slots / d["median_s"])
    assert d["mfu"] == pytest.approx(d["tokens_per_s"] * out["flops_per_token"]["total"] / 1e11)
  for k, v in out["ratios"].items():
    other = k.split("/")[1]
    assert v == pytest.approx(out["engine"]["tokens_per_s"] / out[other]["tokens_per_s"])
  # Same weights, adapter, data and optimizer in both frameworks: same loss at every step.
  assert np.asarray(out["torch_peft"]["losses"]).shape == (2, 2)
  assert out["loss_max_abs_diff_vs_torch"] < 1e-4
  # The engine and the per-client loop run the same training: same losses every step.
  np.testing.assert_allclose(out["engine"]["losses"], out["sequential_jax"]["losses"],
                             rtol=1e-5, atol=1e-5)
  md = report.markdown({"date": "d", "command": "c", "round": out, "notes": [],
                        "machine": {"versions": {"jax": "x"}, "env": {}, "devices": ["cpu"]}})
  assert "| engine |" in md and "engine/torch_peft" in md


def test_ablation_times_variants_that_train_identically(monkeypatch):
  monkeypatch.setitem(models.PRESETS, "micro", MICRO)
  shape = data.RoundShape(clients=2, local_steps=2, batch=2, seq=8, rank=2)
  variants = {k: suite.ABLATIONS[k] for k in ("baseline", "fuse_lora", "remat full",
                                               "scan_layers")}
  out = suite.ablation_section("micro", shape, 2, 4, variants, log=lambda s: None)
  base = out["variants"]["baseline"]
  for name, d in out["variants"].items():
    assert len(d["round_s"]) == 2
    assert d["tokens_per_s"] == pytest.approx(shape.slots / d["median_s"])
    assert d["tokens_per_s_over_baseline"] == pytest.approx(
        d["tokens_per_s"] / base["tokens_per_s"])
    np.testing.assert_allclose(d["losses"], base["losses"], rtol=0, atol=1e-5)
  lines = report.ablation_lines(out)
  assert lines[0] == report.ABLATION_HEADING
  row = next(line for line in lines if line.startswith("| scan_layers |"))
  assert f"| {out['variants']['scan_layers']['tokens_per_s_over_baseline']:.2f}x |" in row


def test_linear_fit_recovers_intercept_and_slope():
  tokens = [100, 200, 400, 800]
  fit = jax_round.linear_fit(tokens, [0.5 + 0.01 * t for t in tokens])
  assert fit["intercept_s"] == pytest.approx(0.5)
  assert fit["s_per_token"] == pytest.approx(0.01)
  assert fit["r2"] == pytest.approx(1.0)


def test_gpu_section_skips_without_accelerator():
  out = suite.gpu_section(suite.GpuOptions(presets=["qwen3-8b"]), log=lambda s: None)
  assert "skipped" in out


@pytest.mark.torch
@pytest.mark.slow  # 293 s at load average 12 on the shared 2-core machine (five compiles, torch)
def test_gpu_dry_run_times_every_variant_of_the_gpu_section():
  pytest.importorskip("peft")
  opt = suite.GpuOptions(presets=["qwen3-1.7b"], shape=data.RoundShape(2, 1, 1, 16, 2),
                         wide_clients={"qwen3-1.7b": 3}, repeats=1, logits_chunk=8,
                         dry_run=True)
  out = suite.gpu_section(opt, log=lambda s: None)
  rows = {r["variant"]: r for r in out["rows"]}
  assert list(rows) == ["engine xla", "engine cudnn", "per-client jit", "torch + PEFT",
                        "engine C=3"]
  assert "skipped" in rows["engine cudnn"]  # no cuDNN on CPU; on a GPU it is timed
  peak = out["matmul_peak"]["peak_flops"]
  for name in ("engine xla", "per-client jit", "torch + PEFT", "engine C=3"):
    r = rows[name]
    assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["median_s"])
    assert r["mfu"] == pytest.approx(r["tokens_per_s"] * r["flops_per_token"] / peak)
  assert rows["engine xla"]["tokens"] == 2 * 16 and rows["engine C=3"]["tokens"] == 3 * 16
  # The vmapped engine and the per-client jitted update train the same clients identically.
  np.testing.assert_allclose(rows["engine xla"]["losses"], rows["per-client jit"]["losses"],
                             atol=1e-2)
  md = report.markdown({"date": "d", "command": "c", "gpu": out, "notes": [],
                        "machine": {"versions": {"jax": "x"}, "env": {}, "devices": ["cpu"]}})
  assert "| qwen3-1.7b | engine C=3 |" in md and "skipped" in md


def test_ledger_section_times_each_backend():
  out = suite.ledger_section([2], ["blspy", "arkworks"], py_ecc_max_clients=0, repeats=2,
                             log=lambda s: None)
  if "skipped" in out:
    pytest.skip(out["skipped"])
  rows = [row for row in out["rows"] if "skipped" not in row]
  if not rows:
    pytest.skip("no compiled BLS backend installed")
  for row in rows:
    assert row["clients"] == 2 and len(row["verify_s_runs"]) == 2
    assert row["verify_s"] == pytest.approx(np.median(row["verify_s_runs"]))
    assert min(row["sign_s_runs"]) > 0 and row["aggregate_s"] > 0
    assert row["cosign_verify_s"] == pytest.approx(np.median(row["cosign_verify_s_runs"]))


def test_memory_fit_and_extrapolation_recover_hand_computed_lines():
  from fedlora_jax.benchmarks import memory  # pylint: disable=import-outside-toplevel
  keys = ("argument_bytes", "temp_bytes", "output_bytes", "alias_bytes", "base_bytes")
  point = lambda layers, cps: {"layers": layers, "clients": 8 * cps, "model": 1,
                               "clients_per_shard": cps,
                               **{k: 100 * layers + 10 * cps for k in keys}}
  row = memory._extrapolate(point(1, 2), point(2, 2), depth=36)  # pylint: disable=protected-access
  assert row["argument_bytes"] == 100 * 36 + 20 and row["argument_bytes_per_layer"] == 100
  assert row["total_bytes"] == 3 * (3600 + 20) - (3600 + 20)
  # total = 1e9 + 2e8 * clients per shard: 16 GB fits 75, 80 GB fits 395.
  rows = [{"model": 2, "clients_per_shard": c, "total_bytes": 1e9 + 2e8 * c} for c in (4, 16)]
  (fit,) = memory.fits(rows, (16, 80, 0.5))
  assert fit["fixed_bytes"] == pytest.approx(1e9) and fit["per_client_bytes"] == 2e8
  assert fit["max_clients_per_shard"] == {"16": 75, "80": 395, "0.5": 0}


def test_memory_section_is_spliced_into_its_own_heading():
  text = "# Benchmarks\n\n## Round\n\nr\n\n## Notes\n\n- n\n"
  once = report.splice_section(text, "## Memory", ["## Memory", "", "m1", ""])
  assert once == "# Benchmarks\n\n## Round\n\nr\n\n## Memory\n\nm1\n\n## Notes\n\n- n\n"
  twice = report.splice_section(once, "## Memory", ["## Memory", "", "m2", ""])
  assert twice == once.replace("m1", "m2")
