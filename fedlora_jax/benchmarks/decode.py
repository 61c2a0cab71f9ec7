"""The decode section: KV-cached generation tokens/s against transformers' `generate`.

Rows: this project's decoder with LoRA unmerged and merged, and transformers + PEFT `generate`
(KV cache, greedy) on the same weights, at batch 1 and 16; then one batch of rows using
different adapters: one jitted call with the adapters gathered per row, against a loop over the
adapters (JAX), PEFT's loop (`set_adapter`) and PEFT's mixed-adapter batch (`adapter_names`).
Every row decodes exactly `new_tokens` tokens after `prompt_len` prompt tokens (no stop token);
tokens/s counts generated tokens only, prefill included in the time.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedlora_jax import generation as G
from fedlora_jax import models
from fedlora_jax.benchmarks import jax_round, torch_peft

@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  preset: str = "qwen3-tiny"
  batches: tuple[int, ...] = (1, 16)
  prompt_len: int = 32
  new_tokens: int = 32
  adapters: int = 4  # the many-adapter batch: rows cycle through this many adapters
  rank: int = 8
  repeats: int = 3
  dtype: str = "float32"  # params and activations (bfloat16 on GPUs)
  run_torch: bool = True
  torch_device: str = "cpu"
  torch_threads: int = 0  # CPU threads of transformers; 0: as set (scripts/benchmark.py: cores)
  num_hidden_layers: int = 0  # 0: the preset's
  model_overrides: tuple[tuple[str, Any], ...] = ()  # more ModelConfig fields (tests: tiny)


def _timed(run: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
  """(first call s (compile included), median of `repeats` timed calls s, last output)."""
  t = time.perf_counter()
  out = jax.block_until_ready(run())
  first = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(run())
    times.append(time.perf_counter() - t)
  return first, statistics.median(times), out


def _adapters(lora: dict, count: int) -> list[dict]:
  """`count` distinct trained-looking adapters (B no longer zero)."""
  out = []
  for a in range(count):
    leaves, treedef = jax.tree.flatten(lora)
    keys = jax.random.split(jax.random.key(100 + a), len(leaves))
    out.append(jax.tree.unflatten(treedef, [x + 0.02 * jax.random.normal(k, x.shape, x.dtype)
                                            for x, k in zip(leaves, keys)]))
  return out


def _row(name: str, batch: int, new: int, first_s: float, median_s: float, **extra) -> dict:
  return {"name": name, "batch": batch, "first_call_s": first_s, "median_s": median_s,
          "tokens_per_s": batch * new / median_s, **extra}


def decode_section(opts: DecodeOptions, log=print) -> dict[str, Any]:
  over = {"param_dtype": opts.dtype, "dtype": opts.dtype, **dict(opts.model_overrides)}
  if opts.num_hidden_layers:
    over["num_hidden_layers"] = opts.num_hidden_layers
  setup = jax_round.build(models.preset(opts.preset, **over), opts.rank)
  cfg, n = setup.cfg, opts.new_tokens
  adapters = _adapters(setup.lora, max(opts.adapters, 1))
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *adapters)
  merged = G.merge_adapter(setup.graphdef, setup.base, adapters[0])
  config = G.DecodeConfig(max_new_tokens=n)
  prompts = np.random.default_rng(0).integers(2, cfg.vocab_size, (max(opts.batches), opts.prompt_len))
  mask = np.ones_like(prompts, np.int32)
  rows, tokens = [], {}
  for b in opts.batches:
    ids = jnp.asarray(prompts[:b], jnp.int32)
    for name, (g, base, lora) in (("jax, LoRA unmerged", (setup.graphdef, setup.base, adapters[0])),
                                  ("jax, LoRA merged", merged)):
      first, med, out = _timed(lambda: G.generate(g, base, lora, ids, mask[:b], config).tokens,
                               opts.repeats)
      rows.append(_row(name, b, n, first, med))
      tokens[(name, b)] = np.asarray(out)
      log(f"  {name} B={b}: {rows[-1]['tokens_per_s']:.0f} tokens/s (first call {first:.1f} s)")
  many_b = max(opts.batches)
  adapter_ids = np.arange(many_b) % opts.adapters
  ids = jnp.asarray(prompts[:many_b], jnp.int32)
  first, med, many_out = _timed(lambda: G.generate(
      setup.graphdef, setup.base, stacked, ids, mask[:many_b], config,
      adapter_ids=adapter_ids).tokens, opts.repeats)
  many = [_row(f"jax, {opts.adapters} adapters in one call", many_b, n, first, med)]

  def loop():
    return [G.generate(setup.graphdef, setup.base, adapters[a], ids[adapter_ids == a],
                       mask[:many_b][adapter_ids == a], config).tokens
            for a in range(opts.adapters)]

  first, med, loop_out = _timed(loop, opts.repeats)
  many.append(_row(f"jax, loop over {opts.adapters} adapters", many_b, n, first, med))
  same = all(np.array_equal(np.asarray(many_out)[adapter_ids == a], np.asarray(loop_out[a]))
             for a in range(opts.adapters))
  for r in many[-2:]:
    log(f"  {r['name']} B={many_b}: {r['tokens_per_s']:.0f} tokens/s")
  result = {"preset": opts.preset, "dtype": opts.dtype, "prompt_len": opts.prompt_len,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpus": len(os.sched_getaffinity(0)),
            "new_tokens": n, "rank": opts.rank, "adapters": opts.adapters,
            "layers": cfg.num_hidden_layers, "backend": jax.default_backend(),
            "rows": rows, "many": many, "many_equals_loop": bool(same)}
  if opts.run_torch:
    torch_rows, torch_many, agree = _torch_rows(setup, adapters, prompts, adapter_ids, opts,
                                                tokens, log)
    result["rows"] += torch_rows
    result["many"] += torch_many
    result["tokens_equal_to_torch"] = agree
    result["torch_threads"] = _torch_threads()
  return result


def _torch_threads() -> int:
  import torch
  return torch.get_num_threads()


def _torch_rows(setup, adapters, prompts, adapter_ids, opts: DecodeOptions, tokens, log):
  """transformers + PEFT generate on the same weights: (rows, many-adapter rows, for each batch
  the fraction of rows whose greedy tokens equal the JAX decoder's)."""
  import peft
  import torch

  if opts.torch_threads:
    torch.set_num_threads(opts.torch_threads)
  random_base = opts.torch_device != "cpu"  # paper-size models: speed only, not the same weights
  pm, _ = torch_peft.build_peft_model(setup.model, adapters[0], setup.lora_config,
                                      device=opts.torch_device, random_base=random_base)
  pm.eval()
  names = [f"a{a}" for a in range(opts.adapters)]
  pc = pm.peft_config["default"]
  for name, lora in zip(names, adapters):
    pm.add_adapter(name, pc)
    sd = {k: torch.from_numpy(np.array(v)).to(opts.torch_device, pm.dtype)
          for k, v in models.peft_tensors(lora).items()}
    peft.set_peft_model_state_dict(pm, sd, adapter_name=name)
  pm.set_adapter(names[0])
  n = opts.new_tokens

  def gen(ids, **kw):
    def run():
      with torch.no_grad():
        out = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                          min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0,
                          **kw)
      if opts.torch_device != "cpu":
        torch.cuda.synchronize()
      return out[:, ids.shape[1]:].cpu().numpy()
    return run

  rows, agree = [], {}
  for b in opts.batches:
    ids = torch.tensor(prompts[:b], device=opts.torch_device)
    first, med, out = _timed(gen(ids), opts.repeats)
    rows.append(_row("transformers + PEFT, LoRA unmerged", b, n, first, med))
    agree[str(b)] = float(np.mean(np.all(out == tokens[("jax, LoRA unmerged", b)], axis=1)))
    log(f"  transformers + PEFT B={b}: {rows[-1]['tokens_per_s']:.0f} tokens/s; "
        f"rows equal to JAX {agree[str(b)]:.2f}")
  many_b = len(adapter_ids)
  ids = torch.tensor(prompts[:many_b], device=opts.torch_device)

  def loop():
    outs = []
    for a, name in enumerate(names):
      pm.set_adapter(name)
      outs.append(gen(ids[torch.from_numpy(adapter_ids == a).to(ids.device)])())
    return outs

  first, med, _ = _timed(loop, opts.repeats)
  many = [_row(f"PEFT, loop over {opts.adapters} adapters", many_b, n, first, med)]
  first, med, _ = _timed(gen(ids, adapter_names=[names[a] for a in adapter_ids]), opts.repeats)
  many.append(_row(f"PEFT, {opts.adapters} adapters in one batch (adapter_names)", many_b, n,
                   first, med))
  for r in many:
    log(f"  {r['name']} B={many_b}: {r['tokens_per_s']:.0f} tokens/s")
  return rows, many, agree
