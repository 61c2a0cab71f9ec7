"""Tiny random Hugging Face checkpoints written by the tests themselves (no downloads)."""

from __future__ import annotations

import os

TINY_QWEN3 = dict(
    vocab_size=97, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=128,
    rope_theta=10000.0, rms_norm_eps=1e-6)
TINY_LLAMA = dict(
    vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128,
    rope_theta=500000.0, rms_norm_eps=1e-5,
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=16))


def make_hf_model(family: str, **overrides):
  """A random fp32 HF causal LM; norm weights randomised too so they are really tested."""
  import torch
  import transformers

  torch.manual_seed(0)
  if family == "qwen3":
    cfg = transformers.Qwen3Config(**{**TINY_QWEN3, **overrides})
    model = transformers.Qwen3ForCausalLM(cfg)
  else:
    cfg = transformers.LlamaConfig(**{**TINY_LLAMA, **overrides})
    model = transformers.LlamaForCausalLM(cfg)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif name.endswith(".bias"):
        p.copy_(0.05 * torch.randn_like(p))
  return model.float().eval()


def save_hf_model(model, path: str, max_shard_size: str | None = None) -> str:
  kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(path, safe_serialization=True, **kw)
  assert os.path.exists(os.path.join(path, "config.json"))
  return path
