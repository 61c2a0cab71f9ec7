"""The tiny base's pretraining: packing, public text that leaves the benchmark out, caching."""

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
  lines = D.icd10_tabular_text(exclude_codes=held)
  assert 60000 < len(lines) < len(D.icd10_tabular_text())
  assert not held_descriptions & {line.split(": ", 1)[1] for line in lines}
  questions = D.public_questions(held, 300, seed=0)
  assert len({q.id for q in questions}) == 300 and not held & {q.id for q in questions}
  assert {q.question.split("diagnosis: ", 1)[1][:-1] for q in questions}.isdisjoint(
      held_descriptions)
  assert all(q.options[q.answer] == D.chapter_names()[q.label] for q in questions)


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
