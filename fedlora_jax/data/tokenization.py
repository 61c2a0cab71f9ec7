"""Tokenizers (a local HF one, or a byte-level BPE trained on ICD-10-CM text) and fixed-shape MCQ arrays.

Both tokenizers are `tokenizers.Tokenizer` objects. A tokenized set is a `TokenizedMCQ` of numpy
arrays, one row per record: the prompt (`format_prompt`) followed by the answer token
(`answer_text`), right-padded to `max_len`, and the row's candidate answer tokens. Prompts too long
for `max_len` lose tokens from the left of the question; the options and "Answer:" are never cut.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from fedlora_jax.data.icd10 import CHAPTER_LABELS, icd10_corpus, icd10_prompt_vocabulary
from fedlora_jax.data.prompts import (ANSWER_CUE, OPTIONS_HEADER, QUESTION_HEADER, candidate_texts,
                                      format_prompt, letter_text)
from fedlora_jax.data.records import LETTERS, MCQRecord

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
_PAD_CANDIDATES = (PAD_TOKEN, "<pad>", "<|endoftext|>", "<|finetune_right_pad_id|>",
                   "<|end_of_text|>", "</s>", "<|eot_id|>")
_TOKENIZER_VERSION = 2


def load_hf_tokenizer(model_dir: str) -> Tokenizer:
  """The tokenizer of a local HF model directory (its tokenizer.json; else transformers' fast one)."""
  path = os.path.join(model_dir, "tokenizer.json")
  if os.path.isfile(path):
    return Tokenizer.from_file(path)
  if not os.path.isdir(model_dir):
    raise FileNotFoundError(f"{model_dir}: no such model directory")
  from transformers import AutoTokenizer  # only for directories without tokenizer.json
  tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
  if not getattr(tok, "is_fast", False):
    raise ValueError(f"{model_dir}: no tokenizer.json and no fast tokenizer to convert")
  return tok.backend_tokenizer


def pad_token_id(tokenizer: Tokenizer) -> int:
  """Id of the first known pad-like token in the vocabulary (0 if none)."""
  for token in _PAD_CANDIDATES:
    idx = tokenizer.token_to_id(token)
    if idx is not None:
      return idx
  return 0


def _tokenizer_corpus() -> list[str]:
  """ICD-10-CM text and the prompt vocabulary, the latter repeated so that its words merge.

  Texts are given with a leading space, as they follow "diagnosis: " or "A. " in prompts; the
  answer texts (`_SINGLE_TOKEN_ANSWERS`) are repeated most, so each becomes one token.
  """
  text = icd10_corpus()
  answers = [f"{QUESTION_HEADER} x?", f"{OPTIONS_HEADER} x, y"]
  for letter in LETTERS:
    answers.append(f"{letter}. x")
  answers += [f"{ANSWER_CUE}{t}" for t in _SINGLE_TOKEN_ANSWERS]
  vocabulary = [" " + t for t in icd10_prompt_vocabulary()]
  return [" " + t for t in text] + vocabulary * 100 + answers * 1000


_SINGLE_TOKEN_ANSWERS = tuple([letter_text(i) for i in range(len(LETTERS))]
                              + [" yes", " no", " maybe"]
                              + [" " + label for label in CHAPTER_LABELS.values()])


def train_icd_tokenizer(vocab_size: int = 4096, cache_dir: str | None = None) -> Tokenizer:
  """A byte-level BPE trained on ICD-10-CM descriptions and the prompt text (cached in cache_dir).

  Special tokens: id 0 `<|pad|>`, id 1 `<|endoftext|>`. Each answer text " A".." J",
  " yes" / " no" / " maybe" and " <chapter label>" (`CHAPTER_LABELS`) is a single token.
  """
  path = None
  if cache_dir is not None:
    key = hashlib.sha256(json.dumps([_TOKENIZER_VERSION, vocab_size]).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"icd_bpe_{vocab_size}_{key}.json")
    if os.path.isfile(path):
      return Tokenizer.from_file(path)
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD_TOKEN, EOS_TOKEN],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
  for text in _SINGLE_TOKEN_ANSWERS:
    if len(tok.encode(text).ids) != 1:
      raise ValueError(f"vocab_size={vocab_size} too small: {text!r} is not a single token")
  if path is not None:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    tok.save(tmp)
    os.replace(tmp, path)
  return tok


@dataclasses.dataclass(frozen=True)
class TokenizedMCQ:
  """A tokenized MCQ set, N rows of length S.

  Attributes:
    input_ids: [N, S] int32, prompt + answer tokens, right-padded with `pad_id`.
    attention_mask: [N, S] int32, 1 on real tokens.
    loss_mask: [N, S] float32, 1.0 where input_ids[n, t] is an answer token (predicted at t-1).
    answer_pos: [N] int32, index of the last prompt token (its logits score the options).
    labels: [N] int32, the answer index.
    option_token_ids: [N, O] int32, the token of each option's answer text (`candidate_texts`).
    pad_id: the pad token id.
    num_truncated: how many prompts lost question tokens to fit S.
  """

  input_ids: np.ndarray
  attention_mask: np.ndarray
  loss_mask: np.ndarray
  answer_pos: np.ndarray
  labels: np.ndarray
  option_token_ids: np.ndarray
  pad_id: int = 0
  num_truncated: int = 0

  def __post_init__(self) -> None:
    n = self.input_ids.shape[0]
    if self.option_token_ids.ndim != 2 or self.option_token_ids.shape[0] != n:
      raise ValueError(f"option_token_ids must be [N={n}, O] (each row's option tokens), got "
                       f"shape {self.option_token_ids.shape}")

  def __len__(self) -> int:
    return int(self.input_ids.shape[0])

  @property
  def seq_len(self) -> int:
    return int(self.input_ids.shape[1])

  def take(self, idx: np.ndarray | Sequence[int]) -> TokenizedMCQ:
    """The rows `idx` (a new set; pad id kept)."""
    idx = np.asarray(idx, np.int64)
    return dataclasses.replace(
        self, input_ids=self.input_ids[idx], attention_mask=self.attention_mask[idx],
        loss_mask=self.loss_mask[idx], answer_pos=self.answer_pos[idx], labels=self.labels[idx],
        option_token_ids=self.option_token_ids[idx], num_truncated=0)

  @staticmethod
  def concatenate(parts: Sequence[TokenizedMCQ]) -> TokenizedMCQ:
    """Rows of all parts in order; they must share S, the number of options and the pad id."""
    first = parts[0]
    for p in parts[1:]:
      if (p.seq_len != first.seq_len or p.pad_id != first.pad_id
          or p.option_token_ids.shape[1] != first.option_token_ids.shape[1]):
        raise ValueError("cannot concatenate sets with different seq_len, pad id or number of "
                         "options")
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])
    return TokenizedMCQ(cat("input_ids"), cat("attention_mask"), cat("loss_mask"),
                        cat("answer_pos"), cat("labels"), cat("option_token_ids"),
                        first.pad_id, sum(p.num_truncated for p in parts))


def option_token_ids(tokenizer: Tokenizer, records: Sequence[MCQRecord]) -> np.ndarray:
  """[N, O] int32: the single token of each option's answer text (" A".., or " <option>" in the
  option style), each distinct text encoded once; an error naming the record if one takes several
  tokens or two of its options share a token."""
  texts = sorted({t for r in records for t in candidate_texts(r)})
  encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
  token_of = dict(zip(texts, (e.ids for e in encodings)))
  rows = []
  for record in records:
    ids = []
    for text in candidate_texts(record):
      if len(token_of[text]) != 1:
        raise ValueError(f"record {record.id!r}: answer text {text!r} is {len(token_of[text])} "
                         f"tokens, not one (answer_style={record.answer_style!r} needs "
                         "single-token answers)")
      ids.append(token_of[text][0])
    if len(set(ids)) != len(ids):
      raise ValueError(f"record {record.id!r}: two options have the same answer token")
    rows.append(ids)
  return np.asarray(rows, np.int32)


def _question_span(record: MCQRecord, offsets: Sequence[tuple[int, int]],
                   special: Sequence[int]) -> tuple[int, int]:
  """Token range [lo, hi) of the question text inside the prompt's tokens."""
  q_start = len(QUESTION_HEADER)
  q_end = q_start + 1 + len(record.question)
  lo = next(t for t, (s, _) in enumerate(offsets) if s >= q_start and not special[t])
  hi = next(t for t, (s, _) in enumerate(offsets) if s >= q_end and not special[t])
  return lo, hi


def tokenize_mcq(tokenizer: Tokenizer, records: Sequence[MCQRecord], max_len: int) -> TokenizedMCQ:
  """Tokenizes records into fixed-shape arrays [N, max_len] (see `TokenizedMCQ`)."""
  if not records:
    raise ValueError("no records to tokenize")
  num_options = len(records[0].options)
  if any(len(r.options) != num_options for r in records):
    raise ValueError("all records of one set must have the same number of options")
  option_ids = option_token_ids(tokenizer, records)
  pad_id = pad_token_id(tokenizer)
  n = len(records)
  input_ids = np.full((n, max_len), pad_id, np.int32)
  attention_mask = np.zeros((n, max_len), np.int32)
  loss_mask = np.zeros((n, max_len), np.float32)
  answer_pos = np.zeros((n,), np.int32)
  labels = np.asarray([r.answer for r in records], np.int32)
  encodings = tokenizer.encode_batch([format_prompt(r) for r in records], add_special_tokens=True)
  num_truncated = 0
  for row, (record, enc) in enumerate(zip(records, encodings)):
    end = len(enc.ids)
    while end and enc.special_tokens_mask[end - 1]:            # no EOS between prompt and answer
      end -= 1
    prompt = list(enc.ids[:end])
    answer = [int(option_ids[row, record.answer])]
    excess = len(prompt) + len(answer) - max_len
    if excess > 0:
      lo, hi = _question_span(record, enc.offsets, enc.special_tokens_mask)
      if excess > hi - lo:
        raise ValueError(f"record {record.id!r}: options and answer cue need "
                         f"{len(prompt) - (hi - lo) + len(answer)} tokens > max_len={max_len}")
      prompt = prompt[:lo] + prompt[lo + excess:]
      num_truncated += 1
    seq = prompt + answer
    input_ids[row, :len(seq)] = seq
    attention_mask[row, :len(seq)] = 1
    loss_mask[row, len(prompt):len(seq)] = 1.0
    answer_pos[row] = len(prompt) - 1
  if num_truncated:
    logging.info("tokenize_mcq: %d of %d prompts truncated to max_len=%d", num_truncated, n,
                 max_len)
  return TokenizedMCQ(input_ids, attention_mask, loss_mask, answer_pos, labels, option_ids,
                      pad_id, num_truncated)
