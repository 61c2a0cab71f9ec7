"""Answering prompts with a run's adapters: each prompt with its hospital's adapter, every
adapter of a batch in one jitted call."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax

from fedlora_jax.data.tokenization import pad_token_id
from fedlora_jax.generation import text
from fedlora_jax.generation.decode import TokenCallback, generate, left_pad
from fedlora_jax.generation.run_dir import GenerationError, RunModel
from fedlora_jax.generation.sampling import DecodeConfig

PROMPT_COLUMNS = 16  # prompts are padded to a multiple of this (fewer shapes to compile)


@dataclasses.dataclass(frozen=True)
class Request:
  prompt: str
  hospital: str | None = None  # None: the run's global adapter


def read_requests(path: str, hospital: str | None) -> list[Request]:
  """JSON lines {"prompt": str, "hospital": str (optional, else `hospital`)}."""
  requests = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise GenerationError(f"{path}:{n}: not JSON ({e.msg})") from e
      if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise GenerationError(f"{path}:{n}: expected an object with a string \"prompt\"")
      name = record.get("hospital", hospital)
      if name is not None and not isinstance(name, str):
        raise GenerationError(f"{path}:{n}: \"hospital\" must be a string")
      requests.append(Request(record["prompt"], name))
  if not requests:
    raise GenerationError(f"{path}: no prompts")
  return requests


def answer(run: RunModel, requests: list[Request], config: DecodeConfig, *,
           adapter_dir: str | None = None, batch_size: int = 16, use_chat_template: bool = True,
           rng: jax.Array | None = None, on_tokens: TokenCallback | None = None
           ) -> list[dict[str, Any]]:
  """One record per request: prompt, hospital, adapter directory, completion, tokens generated.

  `adapter_dir` (an explicit adapter) replaces every request's hospital adapter.
  """
  dirs = [adapter_dir or run.adapter_dir(r.hospital) for r in requests]
  results = []
  for start in range(0, len(requests), batch_size):
    batch, batch_dirs = requests[start:start + batch_size], dirs[start:start + batch_size]
    prompts = []
    for r in batch:
      rendered, special = text.format_prompt(run.base_dir, r.prompt, use_chat_template)
      prompts.append(text.encode(run.tokenizer, rendered, special))
    ids, mask = left_pad(prompts, pad_token_id(run.tokenizer), multiple=PROMPT_COLUMNS)
    distinct = sorted(set(batch_dirs))
    if len(distinct) == 1:
      lora, adapter_ids = run.lora(distinct[0]), None
    else:  # every hospital's adapter in one call
      lora, adapter_ids = run.stacked_loras(distinct), [distinct.index(d) for d in batch_dirs]
    out = generate(run.graphdef, run.base, lora, ids, mask, config, adapter_ids=adapter_ids,
                   rng=None if rng is None else jax.random.fold_in(rng, start),
                   on_tokens=on_tokens)
    for r, d, tokens, length in zip(batch, batch_dirs, out.tokens, out.lengths):
      results.append({"prompt": r.prompt, "hospital": r.hospital, "adapter": d,
                      "completion": text.completion(run.tokenizer, tokens, int(length),
                                                    config.stop_ids),
                      "num_tokens": int(length)})
  return results
