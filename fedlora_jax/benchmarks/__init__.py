"""Benchmarks: round throughput (engine, sequential JAX, PyTorch + PEFT), scaling, memory, MFU,
ledger cost and the GPU-size rounds. `scripts/benchmark.py` is the entry point."""

from fedlora_jax.benchmarks.data import (RoundShape, client_batches, target_tokens,
                                         trained_tokens)
from fedlora_jax.benchmarks.flops import (measure_matmul_peak, train_flops_per_token)
from fedlora_jax.benchmarks.jax_round import (RoundTiming, build, linear_fit, time_engine,
                                              time_sequential)
from fedlora_jax.benchmarks.report import markdown

__all__ = ["RoundShape", "RoundTiming", "build", "client_batches", "linear_fit", "markdown",
           "measure_matmul_peak", "target_tokens", "time_engine", "time_sequential",
           "train_flops_per_token", "trained_tokens"]
