"""Synthetic, fixed-shape client batches and the token counts throughput is measured in."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RoundShape:
  """One round's work: C clients x K local steps x batch B x sequence S, LoRA rank r."""

  clients: int = 8
  local_steps: int = 4
  batch: int = 4
  seq: int = 128
  rank: int = 8

  @property
  def slots(self) -> int:
    """C * K * B * S token positions per round."""
    return self.clients * self.local_steps * self.batch * self.seq


def client_batches(shape: RoundShape, vocab: int, *, seed: int = 0, pad_fraction: float = 0.0,
                   answer_tokens: int | None = None) -> dict[str, np.ndarray]:
  """Random token batches [C, K, B, S] with right padding and a loss mask.

  Args:
    pad_fraction: each row is right-padded by up to this fraction of S (uniformly drawn).
    answer_tokens: only the last this many real tokens of a row are targets (an answer-only
      loss); None trains on every real token after the first (full-sequence SFT).
  """
  c, k, b, s = shape.clients, shape.local_steps, shape.batch, shape.seq
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (c, k, b, s)).astype(np.int32)
  max_pad = int(pad_fraction * s)
  length = s - rng.integers(0, max_pad + 1, (c, k, b))  # real tokens per row
  pos = np.arange(s)
  attention = (pos < length[..., None]).astype(np.int32)
  loss = attention.astype(np.float32)
  loss[..., 0] = 0.0  # the first token is never predicted
  if answer_tokens is not None:
    loss *= (pos >= (length[..., None] - answer_tokens)).astype(np.float32)
  return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss}


def trained_tokens(batches: dict[str, np.ndarray]) -> int:
  """Tokens that run through the model: C*K*B*S minus padding (the throughput numerator)."""
  return int(np.sum(batches["attention_mask"]))


def target_tokens(batches: dict[str, np.ndarray]) -> int:
  """Tokens the loss is taken on."""
  return int(np.sum(batches["loss_mask"] > 0))
