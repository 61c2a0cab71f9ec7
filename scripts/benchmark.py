"""Benchmarks: round throughput (engine vs sequential JAX vs PyTorch+PEFT), scaling, ledger cost,
and the paper's architectures on a GPU. Writes JSON and a markdown table.

    python scripts/benchmark.py --out_md=BENCHMARKS.md --out_json=benchmarks.json
    python scripts/benchmark.py --sections=gpu   # on a GPU machine (random weights, bf16, remat)
"""

from __future__ import annotations

import json

from absl import app, flags

_SECTIONS = flags.DEFINE_list("sections", ["round", "scaling", "ledger", "gpu"],
                              "Sections to run: round, scaling, ledger, gpu.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions (medians are reported).")
_CLIENTS = flags.DEFINE_integer("clients", 8, "Clients in the round section.")
_STEPS = flags.DEFINE_integer("local_steps", 4, "Local steps in the round section.")
_BATCH = flags.DEFINE_integer("batch", 4, "Batch size in the round section.")
_SEQ = flags.DEFINE_integer("seq", 128, "Sequence length in the round section.")
_RANK = flags.DEFINE_integer("rank", 8, "LoRA rank in the round section.")
_NO_TORCH = flags.DEFINE_bool("no_torch", False, "Skip the PyTorch + PEFT baseline.")
_SCALE_CLIENTS = flags.DEFINE_list("scaling_clients", ["1", "4", "16", "64"], "Client counts.")
_SCALE_RANKS = flags.DEFINE_list("scaling_ranks", ["8", "16", "64"], "LoRA ranks.")
_SCALE_SEQS = flags.DEFINE_list("scaling_seqs", ["128", "512"], "Sequence lengths.")
_LEDGER_CLIENTS = flags.DEFINE_list("ledger_clients", ["4", "16", "64"], "Ledger round sizes.")
_PY_ECC_MAX = flags.DEFINE_integer("ledger_py_ecc_max", 16, "Largest round timed with py_ecc.")
_GPU_MODELS = flags.DEFINE_list("gpu_models", ["qwen3-1.7b", "qwen3-8b"], "Presets (gpu).")
_GPU_CLIENTS = flags.DEFINE_integer("gpu_clients", 16, "Clients per round (gpu).")
_GPU_BATCH = flags.DEFINE_integer("gpu_batch", 2, "Batch per client (gpu).")
_GPU_SEQ = flags.DEFINE_integer("gpu_seq", 512, "Sequence length (gpu).")
_GPU_DRY = flags.DEFINE_bool("gpu_dry_run", False, "Run the gpu section shrunken on any device.")
_OUT_JSON = flags.DEFINE_string("out_json", "benchmarks.json", "JSON output path.")
_OUT_MD = flags.DEFINE_string("out_md", "BENCHMARKS.md", "Markdown output path ('' for none).")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from fedlora_jax.benchmarks import flops, suite
  from fedlora_jax.benchmarks.data import RoundShape
  from fedlora_jax.benchmarks.machine import machine_info
  from fedlora_jax.run.cli import run_cli

  unknown = set(_SECTIONS.value) - {"round", "scaling", "ledger", "gpu"}
  if unknown:
    raise app.UsageError(f"unknown sections {sorted(unknown)}")

  def bench():
    result = {"machine": machine_info()}
    if {"round", "scaling"} & set(_SECTIONS.value):
      result["matmul_peak"] = flops.measure_matmul_peak()
    peak = result.get("matmul_peak", {}).get("peak_flops", 0.0)
    cfg = suite.cpu_config()
    if "round" in _SECTIONS.value:
      shape = RoundShape(_CLIENTS.value, _STEPS.value, _BATCH.value, _SEQ.value, _RANK.value)
      result["round"] = suite.round_section(cfg, shape, repeats=_REPEATS.value,
                                            with_torch=not _NO_TORCH.value, peak=peak)
    if "scaling" in _SECTIONS.value:
      result["scaling"] = suite.scaling_section(
          cfg, clients=[int(x) for x in _SCALE_CLIENTS.value],
          ranks=[int(x) for x in _SCALE_RANKS.value], seqs=[int(x) for x in _SCALE_SEQS.value],
          repeats=_REPEATS.value)
    if "ledger" in _SECTIONS.value:
      result["ledger"] = suite.ledger_section([int(x) for x in _LEDGER_CLIENTS.value],
                                              _PY_ECC_MAX.value)
    if "gpu" in _SECTIONS.value:
      shape = RoundShape(_GPU_CLIENTS.value, 2, _GPU_BATCH.value, _GPU_SEQ.value, 16)
      result["gpu"] = suite.gpu_section(_GPU_MODELS.value, shape, repeats=_REPEATS.value,
                                        dry_run=_GPU_DRY.value)
    with open(_OUT_JSON.value, "w") as f:
      json.dump(result, f, indent=1, default=str)
    text = suite.markdown(result)
    if _OUT_MD.value:
      with open(_OUT_MD.value, "w") as f:
        f.write(text + "\n")
    print(text)

  return run_cli(bench)


if __name__ == "__main__":
  flags.FLAGS.alsologtostderr = True
  app.run(main)
