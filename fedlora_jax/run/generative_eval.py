"""`eval.mode=generate`: the final adapters answer every test question in free text.

Each hospital's test prompts (the same token rows the likelihood score reads, up to "Answer:")
are decoded greedily with the adapter the likelihood score uses for that hospital (its personal
one, or the global one), every hospital's rows batched together with their adapters gathered per
row. Each question gets as many new tokens as the longest accepted answer of its set needs; the
answer is scored by `eval.generative.is_correct`. Unlike the likelihood score, which picks the
best of the options' answer tokens, the model has to produce the answer from the whole vocabulary.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from fedlora_jax import generation as G
from fedlora_jax.data.records import MCQRecord
from fedlora_jax.eval.fairness import fairness_summary
from fedlora_jax.eval.generative import answer_texts, is_correct
from fedlora_jax.generation import text

MODES = ("likelihood", "generate")
MAX_NEW_TOKENS = 32  # a longer accepted answer is cut to this (and is then never matched)


def check_mode(cfg, num_processes: int) -> None:
  """Refuses an unknown eval.mode, and generate on several processes (scored on one)."""
  if cfg.eval.mode not in MODES:
    raise ValueError(f"eval.mode must be one of {MODES}, got {cfg.eval.mode!r}")
  if cfg.eval.mode == "generate" and num_processes > 1:
    raise ValueError("eval.mode='generate' is scored on one process; this job has "
                     f"{num_processes}")


def _answer_tokens(tokenizer: Tokenizer, records: list[MCQRecord]) -> int:
  """The most tokens any accepted answer (after a space) takes, capped at MAX_NEW_TOKENS."""
  texts = sorted({" " + a for r in records for a in answer_texts(r)})
  longest = max(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
  return min(longest, MAX_NEW_TOKENS)


def generative_accuracy(graphdef, base, lora_m, tests: dict, records: dict[int, list[MCQRecord]],
                        tokenizer: Tokenizer, stop_ids: tuple[int, ...], batch_size: int
                        ) -> list[float]:
  """Own-test free-text accuracy per test set t (adapter t of [M, ...] when M > 1, else 0).

  `tests` {t: TokenizedMCQ}, `records` {t: the records of its rows, in row order}.
  """
  num_models = jax.tree.leaves(lora_m)[0].shape[0]
  rows = [(t, n) for t in sorted(tests) for n in range(len(tests[t]))]
  config = G.DecodeConfig(
      max_new_tokens=_answer_tokens(tokenizer, [r for t in records for r in records[t]]),
      stop_ids=stop_ids, pad_id=int(tests[rows[0][0]].pad_id))
  right = {t: np.zeros(len(tests[t]), bool) for t in tests}
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    chunk += [chunk[-1]] * (batch_size - len(chunk))  # one shape for every batch
    prompts = [tests[t].input_ids[n, :tests[t].answer_pos[n] + 1] for t, n in chunk]
    ids, mask = G.left_pad(prompts, config.pad_id, multiple=16)
    if num_models > 1:  # each row with its hospital's adapter, all in one call
      out = G.generate(graphdef, base, lora_m, ids, mask, config,
                       adapter_ids=jnp.asarray([t for t, _ in chunk]))
    else:
      out = G.generate(graphdef, base, jax.tree.map(lambda x: x[0], lora_m), ids, mask, config)
    for (t, n), tokens, length in zip(chunk, np.asarray(out.tokens), np.asarray(out.lengths)):
      completion = text.completion(tokenizer, tokens, int(length), stop_ids)
      right[t][n] = is_correct(completion, records[t][n])
  return [float(right[t].mean()) for t in sorted(tests)]


def summary(names: list[str], accuracy: list[float]) -> dict[str, Any]:
  """summary.json's "generate" entry."""
  return {"accuracy": dict(zip(names, accuracy)), "fairness": fairness_summary(accuracy)}
