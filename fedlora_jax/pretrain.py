"""Pretraining the tiny base of the CPU demo on public text, cached as an HF checkpoint.

A real user adapts a pretrained LLM that already has the language of the domain. The CPU demo's
base plays that part: a tiny Qwen3-architecture model trained as a causal LM on public text (the
run setup passes unlabelled diagnosis descriptions outside the benchmark, the chapter and block
titles, and format drills: benchmark-style questions whose options and answer are random, so the
base learns to answer with one of the listed options and nothing about which chapter a description
belongs to), saved as a Hugging Face model directory (config.json, model.safetensors,
tokenizer.json) so that it loads through exactly the code path of a real local checkpoint. The
directory is keyed by a hash of everything that determines it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tokenizers import Tokenizer

from fedlora_jax.data.tokenization import pad_token_id
from fedlora_jax.models import CausalLM, ModelConfig, lm_loss, save_hf_checkpoint

_VERSION = 1


def pack_texts(tokenizer: Tokenizer, texts: Sequence[str], seq_len: int) -> np.ndarray:
  """Token stream of all texts, each followed by EOS, cut into rows [N, seq_len] int32."""
  eos = tokenizer.token_to_id("<|endoftext|>")
  eos = pad_token_id(tokenizer) if eos is None else eos
  stream: list[int] = []
  for enc in tokenizer.encode_batch([" " + t for t in texts]):
    stream.extend(enc.ids)
    stream.append(eos)
  n = len(stream) // seq_len
  if n == 0:
    raise ValueError(f"{len(stream)} tokens of text cannot fill one row of {seq_len}")
  return np.asarray(stream[: n * seq_len], np.int32).reshape(n, seq_len)


def _cache_key(cfg: ModelConfig, tokenizer: Tokenizer, texts: Sequence[str], **hparams) -> str:
  h = hashlib.sha256()
  h.update(json.dumps([_VERSION, cfg.to_hf_config(), cfg.param_dtype, hparams],
                      sort_keys=True).encode())
  h.update(tokenizer.to_str().encode())
  for t in texts:
    h.update(t.encode())
    h.update(b"\0")
  return h.hexdigest()[:16]


def pretrain_base(cfg: ModelConfig, tokenizer: Tokenizer, texts: Sequence[str], *, steps: int,
                  batch_size: int, seq_len: int, learning_rate: float, seed: int,
                  cache_dir: str) -> str:
  """Trains `cfg` from scratch on `texts` (or reuses the cached result); returns the model dir."""
  key = _cache_key(cfg, tokenizer, texts, steps=steps, batch_size=batch_size, seq_len=seq_len,
                   learning_rate=learning_rate, seed=seed)
  out_dir = os.path.join(cache_dir, f"pretrained-{key}")
  if os.path.exists(os.path.join(out_dir, "model.safetensors")):
    return out_dir
  rows = pack_texts(tokenizer, texts, seq_len)
  model = CausalLM(cfg, rngs=nnx.Rngs(params=seed))
  graphdef, params = nnx.split(model)
  params = params.to_pure_dict()
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, steps // 20), steps,
                                                learning_rate * 0.1)
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
  opt_state = opt.init(params)
  ones = np.ones((batch_size, seq_len), np.int32)

  @jax.jit
  def step(params, opt_state, ids):
    batch = {"input_ids": ids, "attention_mask": ones, "loss_mask": ones.astype(np.float32)}
    loss, grads = jax.value_and_grad(lambda p: lm_loss(graphdef, p, {}, batch)[0])(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  t0 = time.time()
  for i in range(steps):
    idx = rng.integers(0, len(rows), batch_size)
    params, opt_state, loss = step(params, opt_state, jnp.asarray(rows[idx]))
    if i % max(1, steps // 5) == 0 or i == steps - 1:
      logging.info("pretrain step %d/%d loss %.3f (%.0f s)", i + 1, steps, float(loss),
                   time.time() - t0)
  tmp = f"{out_dir}.tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  save_hf_checkpoint(nnx.merge(graphdef, params), tmp)
  tokenizer.save(os.path.join(tmp, "tokenizer.json"))
  with open(os.path.join(tmp, "pretrain.json"), "w") as f:
    json.dump({"steps": steps, "batch_size": batch_size, "seq_len": seq_len,
               "learning_rate": learning_rate, "seed": seed, "rows": int(len(rows)),
               "final_loss": float(loss), "seconds": time.time() - t0}, f, indent=2)
  os.makedirs(cache_dir, exist_ok=True)
  if os.path.exists(out_dir):  # another process finished first
    shutil.rmtree(tmp)
  else:
    os.replace(tmp, out_dir)
  return out_dir
