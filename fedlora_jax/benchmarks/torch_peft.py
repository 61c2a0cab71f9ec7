"""The baseline users pick today: PyTorch + HF PEFT, one model, clients trained one after another.

As in OpenFedLLM: one `PeftModel` wraps the base; for each client of the round the global adapter
is loaded (`set_peft_model_state_dict`), K AdamW steps are taken on the client's batches (with a
fresh optimizer and gradient clipping at 1.0, as HF's Trainer does), the adapter is saved
(`get_peft_model_state_dict`, cloned to the host), and after the last client the saved adapters are
averaged with sample-count weights into the new global adapter.

The base is the JAX model's own weights: `save_hf_checkpoint` writes them, transformers'
`from_pretrained` reads them back into the identical architecture (`cfg.to_hf_config()`), and the
PEFT adapter starts from the same LoRA A/B values, so both sides train the same function.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any

import numpy as np


@dataclasses.dataclass
class TorchRoundResult:
  round_s: list[float]  # wall time of each timed round
  losses: np.ndarray  # [C, K]; every timed round starts from the same global adapter
  num_threads: int
  setup_s: float
  host_peak_rss_growth_bytes: int = 0


def _torch():
  import torch
  return torch


def build_peft_model(model, lora_tree: dict, lora_config, *, num_threads: int | None = None,
                     device: str = "cpu", random_base: bool = False):
  """(peft_model, adapter state dict) with `lora_tree` as adapter on `device`.

  The base holds the JAX model's weights in float32, or, with `random_base` (speed only: the
  paper-size models of the GPU section), transformers' own random init of the same architecture
  in the model's `param_dtype`, created directly on the device.
  """
  torch = _torch()
  import peft
  import transformers

  from fedlora_jax.models import peft_tensors, save_hf_checkpoint

  if num_threads is not None:
    torch.set_num_threads(num_threads)
  if random_base:
    hf_config = transformers.AutoConfig.for_model(**model.cfg.to_hf_config())
    with torch.device(device):
      hf = transformers.AutoModelForCausalLM.from_config(
          hf_config, dtype=getattr(torch, model.cfg.param_dtype))
  else:
    with tempfile.TemporaryDirectory() as d:
      save_hf_checkpoint(model, d)
      hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    hf = hf.to(device)
  hf.config.use_cache = False
  pc = peft.LoraConfig(r=lora_config.rank, lora_alpha=lora_config.alpha,
                       target_modules=list(lora_config.target_modules), lora_dropout=0.0,
                       use_rslora=lora_config.use_rslora, bias="none", task_type="CAUSAL_LM")
  pm = peft.get_peft_model(hf, pc)
  pm.train()
  sd = {k: torch.from_numpy(np.array(v)).to(device) for k, v in peft_tensors(lora_tree).items()}
  peft.set_peft_model_state_dict(pm, sd)
  return pm, sd


def adapter_state(pm) -> dict[str, Any]:
  import peft
  return {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(pm).items()}


def run_round(pm, global_sd: dict, batches: dict[str, np.ndarray], num_samples, *,
              learning_rate: float = 1e-3, grad_clip_norm: float | None = 1.0):
  """One OpenFedLLM-style round. batches leaves [C, K, B, S]. Returns (new global, losses [C, K])."""
  torch = _torch()
  import peft

  c, k = batches["input_ids"].shape[:2]
  device = pm.device
  ids = torch.from_numpy(np.asarray(batches["input_ids"], np.int64)).to(device)
  att = torch.from_numpy(np.asarray(batches["attention_mask"], np.int64)).to(device)
  lm = np.asarray(batches["loss_mask"]) > 0
  labels = np.where(lm, batches["input_ids"], -100).astype(np.int64)
  labels = torch.from_numpy(labels).to(device)
  params = [p for p in pm.parameters() if p.requires_grad]
  saved, losses = [], np.zeros((c, k), np.float32)
  for ci in range(c):
    peft.set_peft_model_state_dict(pm, global_sd)
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    for ki in range(k):
      out = pm(input_ids=ids[ci, ki], attention_mask=att[ci, ki], labels=labels[ci, ki])
      out.loss.backward()
      if grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, grad_clip_norm)
      opt.step()
      opt.zero_grad(set_to_none=True)
      losses[ci, ki] = float(out.loss.detach())
    saved.append(adapter_state(pm))
  w = np.asarray(num_samples, np.float64)
  w = w / w.sum()
  new_global = {name: sum(float(w[i]) * saved[i][name] for i in range(c)) for name in global_sd}
  return new_global, losses


def time_rounds(model, lora_tree, lora_config, batches, num_samples, *, repeats: int,
                num_threads: int, learning_rate: float = 1e-3, device: str = "cpu",
                random_base: bool = False) -> TorchRoundResult:
  """Builds the PEFT model, runs one untimed warm-up round, then `repeats` timed rounds (each
  round ends with a host read of every loss, so GPU work is finished when it is timed)."""
  torch = _torch()
  t0 = time.perf_counter()
  pm, global_sd = build_peft_model(model, lora_tree, lora_config, num_threads=num_threads,
                                   device=device, random_base=random_base)
  setup = time.perf_counter() - t0
  from fedlora_jax.benchmarks.machine import PeakRSS
  with PeakRSS() as mem:
    run_round(pm, global_sd, batches, num_samples, learning_rate=learning_rate)  # warm-up
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      _, losses = run_round(pm, global_sd, batches, num_samples, learning_rate=learning_rate)
      if device.startswith("cuda"):
        torch.cuda.synchronize()  # the adapter average is still queued
      times.append(time.perf_counter() - t)
  return TorchRoundResult(round_s=times, losses=losses, num_threads=torch.get_num_threads(),
                          setup_s=setup, host_peak_rss_growth_bytes=mem.growth)
