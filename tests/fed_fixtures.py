"""A tiny model and random client batches shared by the federated-engine tests."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from fedlora_jax import models

TINY = models.preset("qwen3-tiny", vocab_size=64, hidden_size=32, intermediate_size=48,
                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                     head_dim=16)
LORA = models.LoRAConfig(rank=2, alpha=4.0)


def tiny_model(cfg=TINY, lora=LORA, seed=0):
  """(graphdef, base, lora) with a random nonzero B so A's gradients are nonzero too."""
  model = models.CausalLM(cfg, rngs=nnx.Rngs(params=seed))
  models.add_lora(model, lora, rngs=nnx.Rngs(lora=seed + 1))
  graphdef, base, lora_tree = models.split_lora(model)
  key = jax.random.key(seed + 2)
  leaves, treedef = jax.tree.flatten_with_path(lora_tree)
  out = [0.1 * jax.random.normal(jax.random.fold_in(key, i), x.shape) if p[-1].key == "lora_B"
         else x for i, (p, x) in enumerate(leaves)]
  return graphdef, base, jax.tree.unflatten(treedef, out)


def client_batches(c: int, k: int, b: int = 2, s: int = 8, seed: int = 0, vocab: int = 64):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (c, k, b, s)).astype(np.int32)
  mask = np.ones((c, k, b, s), np.int32)
  mask[..., -2:] = rng.integers(0, 2, (c, k, b, 2))
  mask[..., -1] *= mask[..., -2]  # right padding only
  loss = np.zeros((c, k, b, s), np.float32)
  loss[..., 3:6] = 1.0
  return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss}
