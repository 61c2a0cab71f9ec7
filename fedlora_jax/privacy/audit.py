"""Empirical privacy auditing in one training run (Steinke, Nasr and Jagielski, NeurIPS 2023).

m canary records, each a question with a random label among random options (nothing in the data
predicts it), are each inserted into one hospital's training set independently with probability
1/2, by the auditor's own randomness. After one federated run the auditor scores every canary by
how much the released global adapter raised the log-probability of its random answer over the
initial adapter (the loss drop): a memorised canary scores high. jax-privacy's
`CanaryScoreAuditor.epsilon_one_run` turns the scores of the included and the left-out canaries
into a lower bound on epsilon at the chosen confidence: a run whose claimed epsilon is below that
bound has broken its claim. (The bound is for the unit of one record: it audits example-level
DP.)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax_privacy import auditing

from fedlora_jax import models
from fedlora_jax.data import MCQRecord, TokenizedMCQ
from fedlora_jax.eval import option_log_probs

CANARY_SOURCE = "canary"
QUESTION_WORDS = 6  # random words per canary question (unique questions, nothing to generalise)


def make_canaries(count: int, words: Sequence[str], labels: Sequence[str],
                  rng: np.random.Generator, num_options: int = 4) -> list[MCQRecord]:
  """`count` canaries: a question of random `words`, `num_options` distinct random `labels`,
  and a random answer (option style: the answer is the label, as in the embedded benchmark)."""
  if len(labels) < num_options or len(set(words)) < 2 * QUESTION_WORDS:
    raise ValueError(f"canaries need >= {num_options} labels and >= {2 * QUESTION_WORDS} words")
  out, seen = [], set()
  while len(out) < count:
    question = " ".join(rng.choice(list(words), QUESTION_WORDS))
    if question in seen:
      continue
    seen.add(question)
    options = tuple(str(x) for x in rng.choice(list(labels), num_options, replace=False))
    out.append(MCQRecord(question=question, options=options,
                         answer=int(rng.integers(num_options)), source=CANARY_SOURCE,
                         id=f"canary-{len(out)}", answer_style="option"))
  return out


def membership_scores(graphdef, base, lora_before, lora_after, canaries: TokenizedMCQ,
                      batch_size: int = 64) -> np.ndarray:
  """[m] log p(answer | prompt) under `lora_after` minus under `lora_before` (higher: more
  likely a member)."""
  @jax.jit
  def answer_log_prob(lora, ids, mask, pos, options, labels):
    lp_bo = option_log_probs(models.last_logits(graphdef, base, lora, ids, mask, pos), options)
    return jnp.take_along_axis(lp_bo, labels[:, None], axis=1)[:, 0]

  scores = []
  for start in range(0, len(canaries), batch_size):
    sl = slice(start, start + batch_size)
    args = (canaries.input_ids[sl], canaries.attention_mask[sl], canaries.answer_pos[sl],
            canaries.option_token_ids[sl], canaries.labels[sl])
    scores.append(np.asarray(answer_log_prob(lora_after, *args))
                  - np.asarray(answer_log_prob(lora_before, *args)))
  return np.concatenate(scores)


def epsilon_lower_bound(scores: np.ndarray, included: np.ndarray, *, significance: float,
                        delta: float) -> float:
  """The one-run lower bound on epsilon at confidence 1 - significance (jax-privacy)."""
  scores, included = np.asarray(scores, np.float64), np.asarray(included, bool)
  if scores.shape != included.shape or included.all() or not included.any():
    raise ValueError("need a score for every canary and canaries both in and out")
  auditor = auditing.CanaryScoreAuditor(scores[included], scores[~included])
  return float(auditor.epsilon_one_run(significance=significance, delta=delta))
