"""Text in and out of the decoder: chat template, stop tokens, incremental detokenisation."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

import numpy as np
from tokenizers import Tokenizer


def chat_template(model_dir: str) -> str | None:
  """The Jinja chat template of the model directory's tokenizer config, if it has one."""
  path = os.path.join(model_dir, "tokenizer_config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    template = json.load(f).get("chat_template")
  return template if isinstance(template, str) else None


def format_prompt(model_dir: str, text: str, use_chat_template: bool) -> tuple[str, bool]:
  """(text to tokenize, whether it already holds the special tokens): a one-turn user
  conversation rendered by transformers' `apply_chat_template` (generation prompt appended) when
  the model has a template, else the text itself."""
  if not use_chat_template or chat_template(model_dir) is None:
    return text, False
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
  rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                     add_generation_prompt=True)
  return rendered, True


def stop_ids(model_dir: str, tokenizer: Tokenizer) -> tuple[int, ...]:
  """The eos ids of config.json and generation_config.json (an int or a list in either)."""
  ids: set[int] = set()
  for name in ("config.json", "generation_config.json"):
    path = os.path.join(model_dir, name)
    if os.path.isfile(path):
      with open(path) as f:
        eos = json.load(f).get("eos_token_id")
      ids.update([eos] if isinstance(eos, int) else (eos or []))
  return tuple(sorted(i for i in ids if 0 <= i < tokenizer.get_vocab_size()))


def encode(tokenizer: Tokenizer, text: str, has_special_tokens: bool) -> list[int]:
  return tokenizer.encode(text, add_special_tokens=not has_special_tokens).ids


def completion(tokenizer: Tokenizer, tokens: Sequence[int], length: int,
               stops: Sequence[int]) -> str:
  """The text of the first `length` generated tokens, the stop token left out."""
  kept = [int(t) for t in np.asarray(tokens)[:length] if int(t) not in stops]
  return tokenizer.decode(kept, skip_special_tokens=True)


class StreamPrinter:
  """Prints row 0's text as its tokens arrive (a `TokenCallback`); decodes the whole prefix each
  time so multi-token characters print once complete."""

  def __init__(self, tokenizer: Tokenizer, stops: Sequence[int], out: TextIO = sys.stdout):
    self.tokenizer, self.stops, self.out = tokenizer, set(stops), out
    self.tokens: list[int] = []
    self.printed = ""

  def __call__(self, tokens_b: np.ndarray, done_b: np.ndarray) -> None:
    token = int(tokens_b[0])
    if bool(done_b[0]) or token in self.stops:
      return
    self.tokens.append(token)
    text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
    if text.startswith(self.printed) and not text.endswith("\ufffd"):
      self.out.write(text[len(self.printed):])
      self.out.flush()
      self.printed = text
