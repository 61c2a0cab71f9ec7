"""Model FLOPs of LoRA training and the machine's matmul throughput they are compared with.

Per trained token, with the base frozen (no weight gradients for it):
  base matmuls   4 * N_base   (forward 2N, activation gradients 2N)
  LoRA matmuls   6 * N_lora   (forward, activation and weight gradients)
  attention      12 * L * S * n_heads * head_dim   (QK^T and PV forward, twice that backward;
                 counted over the full S x S square as PaLM's MFU does)
N_base counts the projections and the LM head (the input embedding is a lookup, not a matmul;
a tied embedding is counted once, as the head). MFU = model FLOPs per second / peak, where the
peak is the measured fp32 matmul throughput of the machine (CPU) or the chip's dense bf16 peak.
"""

from __future__ import annotations

import time

import numpy as np

from fedlora_jax.models import ModelConfig

# Dense (non-sparse) bf16 peaks in FLOP/s by `device_kind` prefix.
CHIP_PEAK_BF16 = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,  # SXM; the PCIe card is 756e12
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,
    "TPU v4": 275e12,
}


def base_matmul_params(cfg: ModelConfig) -> int:
  """Parameters that take part in a matmul per token: projections plus the LM head."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  q = cfg.num_attention_heads * cfg.head_dim
  kv = cfg.num_key_value_heads * cfg.head_dim
  layer = d * q * 2 + d * kv * 2 + 3 * d * f
  return cfg.num_hidden_layers * layer + cfg.vocab_size * d


def lora_params(cfg: ModelConfig, rank: int, targets=("q_proj", "k_proj", "v_proj", "o_proj",
                                                       "gate_proj", "up_proj", "down_proj")) -> int:
  d, f = cfg.hidden_size, cfg.intermediate_size
  q = cfg.num_attention_heads * cfg.head_dim
  kv = cfg.num_key_value_heads * cfg.head_dim
  shapes = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
  return cfg.num_hidden_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def train_flops_per_token(cfg: ModelConfig, rank: int, seq: int) -> dict[str, float]:
  base = 4.0 * base_matmul_params(cfg)
  lora = 6.0 * lora_params(cfg, rank)
  attn = 12.0 * cfg.num_hidden_layers * seq * cfg.num_attention_heads * cfg.head_dim
  return {"base": base, "lora": lora, "attention": attn, "total": base + lora + attn}


def measure_matmul_peak(sizes=(512, 1024, 2048), dtype="float32", repeats: int = 5) -> dict:
  """Best FLOP/s of a jitted square matmul (the machine's fp32 matmul throughput on CPU)."""
  import jax
  import jax.numpy as jnp

  out = {}
  for n in sizes:
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n)), dtype)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    reps = max(repeats, int(2e10 / (2 * n ** 3)))  # at least ~20 GFLOP per size
    best = float("inf")
    for _ in range(3):
      t = time.perf_counter()
      for _ in range(reps):
        r = f(a, b)
      r.block_until_ready()
      best = min(best, (time.perf_counter() - t) / reps)
    out[n] = 2 * n ** 3 / best
  return {"dtype": dtype, "by_size": out, "peak_flops": max(out.values())}


def measure_torch_matmul_peak(sizes=(512, 1024, 2048), repeats: int = 5) -> dict | None:
  try:
    import torch
  except ImportError:
    return None
  out = {}
  for n in sizes:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps = max(repeats, int(2e10 / (2 * n ** 3)))
    best = float("inf")
    for _ in range(3):
      t = time.perf_counter()
      for _ in range(reps):
        a @ b
      best = min(best, (time.perf_counter() - t) / reps)
    out[n] = 2 * n ** 3 / best
  return {"dtype": "float32", "by_size": out, "peak_flops": max(out.values()),
          "num_threads": torch.get_num_threads()}


def chip_peak(device_kind: str) -> float | None:
  for prefix, peak in CHIP_PEAK_BF16.items():
    if device_kind.startswith(prefix):
      return peak
  return None
