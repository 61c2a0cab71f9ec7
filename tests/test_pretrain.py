"""The tiny base's pretraining: packing, public text that leaves the benchmark out, caching."""

import collections
import json
import os

import numpy as np
import pytest
from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

from fedlora_jax import data as D
from fedlora_jax import models
from fedlora_jax.pretrain import pack_texts, pretrain_base


def _word_tokenizer(words):
  vocab = {"<|pad|>": 0, "<|endoftext|>": 1, **{w: i + 2 for i, w in enumerate(words)}}
  tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="<|pad|>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return tok


def test_pack_texts_separates_documents_with_eos():
  tok = _word_tokenizer(["a", "b", "c"])
  rows = pack_texts(tok, ["a b", "c", "a a a"], seq_len=3)
  # stream: a b EOS c EOS a a a EOS -> 9 tokens -> 3 rows of 3
  np.testing.assert_array_equal(rows, [[2, 3, 1], [4, 1, 2], [2, 2, 1]])
  with pytest.raises(ValueError, match="cannot fill one row"):
    pack_texts(tok, ["a"], seq_len=8)


def test_public_text_never_contains_benchmark_codes():
  bench = D.build_icd10_benchmark(seed=0)
  held = {r.id for n in bench.client_names for s in ("train", "val", "test")
          for r in bench.clients[n].split(s)}
  held_descriptions = {r.question.split("diagnosis: ", 1)[1][:-1]
                       for n in bench.client_names for s in ("train", "val", "test")
                       for r in bench.clients[n].split(s)}
  lines = D.public_descriptions(held, 4200, seed=0)
  assert len(lines) == 4200 and not held_descriptions & set(lines)
  table = D.icd10._code_table()
  chapter_of = dict(zip(table.descriptions, table.chapters))
  names = D.chapter_names()
  assert collections.Counter(chapter_of[line] for line in lines) == {ch: 200 for ch in names}
  drills = D.format_drills(held, 2100, seed=0)
  assert not held & {q.id for q in drills}
  assert {q.question.split("diagnosis: ", 1)[1][:-1] for q in drills}.isdisjoint(
      held_descriptions)
  assert collections.Counter(q.label for q in drills) == {ch: 100 for ch in names}
  # options and answers random: the right chapter is listed about 4/21 of the time and marked as
  # the answer about 1/21 of the time (binomial 3-sigma bounds), answer slots uniform
  listed = np.mean([names[q.label] in q.options for q in drills])
  marked = np.mean([q.options[q.answer] == names[q.label] for q in drills])
  assert abs(listed - 4 / 21) < 3 * np.sqrt(4 / 21 * 17 / 21 / 2100)
  assert abs(marked - 1 / 21) < 3 * np.sqrt(1 / 21 * 20 / 21 / 2100)
  slots = np.bincount([q.answer for q in drills], minlength=4) / 2100
  assert np.all(np.abs(slots - 0.25) < 3 * np.sqrt(0.25 * 0.75 / 2100))
  assert all(len(set(q.options)) == 4 for q in drills)
  labelled = D.format_drills(held, 42, seed=0, chapter_style="label")
  assert all(q.answer_style == "option" and set(q.options) <= set(D.CHAPTER_LABELS.values())
             for q in labelled)


def test_pretraining_lowers_the_loss_and_is_cached(tmp_path):
  tok = _word_tokenizer([f"w{i}" for i in range(30)])
  texts = [" ".join(f"w{(i + j) % 30}" for j in range(6)) for i in range(200)]  # predictable
  cfg = models.preset("qwen3-tiny", vocab_size=64, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=16)
  kw = dict(steps=60, batch_size=8, seq_len=16, learning_rate=1e-2, seed=0,
            cache_dir=str(tmp_path))
  path = pretrain_base(cfg, tok, texts, **kw)
  info = json.load(open(os.path.join(path, "pretrain.json")))
  assert info["final_loss"] < 0.5 * np.log(64)  # well below a uniform guess over the vocab
  model = models.load_hf_checkpoint(path, param_dtype="float32", dtype="float32")
  assert model.cfg.vocab_size == 64 and os.path.exists(os.path.join(path, "tokenizer.json"))
  mtime = os.path.getmtime(os.path.join(path, "model.safetensors"))
  assert pretrain_base(cfg, tok, texts, **kw) == path  # cache hit: not trained again
  assert os.path.getmtime(os.path.join(path, "model.safetensors")) == mtime
  assert pretrain_base(cfg, tok, texts, **{**kw, "steps": 61}) != path
