"""Tokenizers and fixed-shape MCQ arrays: single-token letters, masks exactly on answers, truncation."""

import os

import numpy as np
import pytest

from fedlora_jax.data import (MCQRecord, TokenizedMCQ, answer_text, build_icd10_benchmark,
                              format_prompt, load_hf_tokenizer, pad_token_id, tokenize_mcq,
                              train_icd_tokenizer)
from fedlora_jax.data.icd10 import CHAPTER_LABELS
from fedlora_jax.data.prompts import QUESTION_HEADER, candidate_texts


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(cache):
  return train_icd_tokenizer(4096, cache_dir=cache)


@pytest.fixture(scope="module")
def records():
  return build_icd10_benchmark(seed=0).clients["clinic"].train


def test_prompt_templates():
  r = MCQRecord("Which is red?", ("apple", "sky"), 0, "toy", "1")
  assert format_prompt(r) == "Question: Which is red?\nA. apple\nB. sky\nAnswer:"
  assert candidate_texts(r) == [" A", " B"] and answer_text(r) == " A"
  o = MCQRecord("Which is red?", ("apple", "sky", "sea"), 2, "toy", "1", answer_style="option")
  assert format_prompt(o) == "Question: Which is red?\nOptions: apple, sky, sea\nAnswer:"
  assert candidate_texts(o) == [" apple", " sky", " sea"] and answer_text(o) == " sea"
  with pytest.raises(ValueError, match="answer_style"):
    MCQRecord("q", ("a", "b"), 0, "toy", "1", answer_style="word")


def test_answer_texts_are_single_tokens(tok):
  assert tok.get_vocab_size() == 4096
  assert pad_token_id(tok) == 0 and tok.id_to_token(1) == "<|endoftext|>"
  for text in [" A", " B", " C", " D", " E", " yes", " no", " maybe"]:
    assert len(tok.encode(text).ids) == 1, text
  ids = [tok.encode(t).ids[0] for t in [" A", " B", " C", " D"]]
  assert len(set(ids)) == 4
  labels = [tok.encode(" " + label).ids for label in CHAPTER_LABELS.values()]
  assert all(len(ids) == 1 for ids in labels) and len({i[0] for i in labels}) == 21
  # the trained vocabulary knows the domain: frequent clinical words are one token
  for word in [" infarction", " pregnancy", " fracture", " neoplasm", " Diseases"]:
    assert len(tok.encode(word).ids) == 1, word


def test_tokenizer_cached_and_deterministic(tok, cache):
  files = [f for f in os.listdir(cache) if f.endswith(".json")]
  assert len(files) == 1
  assert train_icd_tokenizer(4096, cache_dir=cache).to_str() == tok.to_str()   # from cache
  assert train_icd_tokenizer(4096, cache_dir=None).to_str() == tok.to_str()    # retrained


def test_load_hf_tokenizer_from_local_dir(tok, tmp_path):
  tok.save(str(tmp_path / "tokenizer.json"))
  loaded = load_hf_tokenizer(str(tmp_path))
  text = "Question: Acute myocardial infarction?\nAnswer: B"
  assert loaded.encode(text).ids == tok.encode(text).ids
  with pytest.raises(FileNotFoundError):
    load_hf_tokenizer(str(tmp_path / "missing"))


def test_masks_exactly_on_answer_tokens(tok, records):
  data = tokenize_mcq(tok, records, max_len=128)
  n = len(records)
  assert data.input_ids.shape == data.attention_mask.shape == data.loss_mask.shape == (n, 128)
  assert data.input_ids.dtype == np.int32 and data.loss_mask.dtype == np.float32
  assert data.answer_pos.shape == data.labels.shape == (n,)
  assert data.num_truncated == 0
  letters = np.asarray([tok.encode(f" {x}").ids[0] for x in "ABCD"])
  np.testing.assert_array_equal(data.option_token_ids, np.tile(letters, (n, 1)))
  for row, r in enumerate(records):
    prompt = tok.encode(format_prompt(r)).ids
    pos = data.answer_pos[row]
    assert pos == len(prompt) - 1
    np.testing.assert_array_equal(data.input_ids[row, :len(prompt)], prompt)
    assert np.flatnonzero(data.loss_mask[row]).tolist() == [pos + 1]
    assert (data.input_ids[row, pos + 1] == letters[r.answer]
            == data.option_token_ids[row, data.labels[row]])
    assert data.attention_mask[row].sum() == pos + 2 and data.attention_mask[row, :pos + 2].all()
    assert (data.input_ids[row, pos + 2:] == 0).all()
  assert data.loss_mask.sum() == n


def test_truncation_cuts_question_left_keeps_options(tok, records):
  full = [tok.encode(format_prompt(r)).ids for r in records]
  max_len = 64
  data = tokenize_mcq(tok, records, max_len=max_len)
  expected = sum(len(p) + 1 > max_len for p in full)
  assert expected > 10 and data.num_truncated == expected
  header = tok.encode(QUESTION_HEADER).ids
  for row, (r, prompt) in enumerate(zip(records, full)):
    pos = data.answer_pos[row]
    if len(prompt) + 1 <= max_len:
      assert pos == len(prompt) - 1
      continue
    assert pos == max_len - 2 and data.attention_mask[row].all()
    tail = tok.encode(format_prompt(r)[len(QUESTION_HEADER) + 1 + len(r.question):]).ids
    kept = data.input_ids[row, :pos + 1].tolist()
    assert kept[:len(header)] == header                       # header kept
    assert kept[-len(tail):] == prompt[-len(tail):]           # options and "Answer:" kept
    assert kept[len(header):] == prompt[len(prompt) - (len(kept) - len(header)):]  # left cut
    assert data.input_ids[row, pos + 1] == data.option_token_ids[row, r.answer]
  with pytest.raises(ValueError, match="max_len=20"):
    tokenize_mcq(tok, records, max_len=20)


def test_take_and_concatenate(tok, records):
  data = tokenize_mcq(tok, records, max_len=128)
  a, b = data.take([0, 1, 2]), data.take(np.arange(3, len(data)))
  both = TokenizedMCQ.concatenate([a, b])
  np.testing.assert_array_equal(both.input_ids, data.input_ids)
  np.testing.assert_array_equal(both.labels, data.labels)
  np.testing.assert_array_equal(both.option_token_ids, data.option_token_ids)
  np.testing.assert_array_equal(a.option_token_ids, data.option_token_ids[:3])
  assert len(a) == 3 and both.seq_len == 128
  with pytest.raises(ValueError):
    TokenizedMCQ.concatenate([a, tokenize_mcq(tok, records[:2], max_len=100)])


def test_special_tokens_of_hf_style_post_processor(tok, records):
  """A tokenizer adding BOS and EOS (as HF ones do): BOS kept first, no EOS before the answer."""
  from tokenizers import Tokenizer, processors
  wrapped = Tokenizer.from_str(tok.to_str())
  wrapped.post_processor = processors.TemplateProcessing(
      single="<|endoftext|> $A <|endoftext|>", special_tokens=[("<|endoftext|>", 1)])
  plain = tokenize_mcq(tok, records, max_len=128)
  data = tokenize_mcq(wrapped, records, max_len=128)
  assert (data.input_ids[:, 0] == 1).all()
  np.testing.assert_array_equal(data.answer_pos, plain.answer_pos + 1)
  np.testing.assert_array_equal(data.input_ids[:, 1:], plain.input_ids[:, :-1])
  short = tokenize_mcq(wrapped, records, max_len=64)
  assert short.num_truncated > 10 and (short.input_ids[:, 0] == 1).all()
  rows = np.arange(len(records))
  np.testing.assert_array_equal(short.input_ids[rows, short.answer_pos + 1],
                                short.option_token_ids[rows, short.labels])


def test_option_style_rows_score_their_own_labels(tok):
  """Chapter-label records: each row's candidates are its options' one-token labels, the target
  is the right label; a record whose option is several tokens is refused by name."""
  records = build_icd10_benchmark(seed=0, chapter_style="label").clients["clinic"].train
  assert all(r.answer_style == "option" for r in records)
  data = tokenize_mcq(tok, records, max_len=64)
  assert data.num_truncated == 0 and data.option_token_ids.shape == (len(records), 4)
  for row, r in enumerate(records):
    expected = [tok.encode(" " + o).ids[0] for o in r.options]
    np.testing.assert_array_equal(data.option_token_ids[row], expected)
    prompt = tok.encode(format_prompt(r)).ids
    assert data.answer_pos[row] == len(prompt) - 1
    assert data.input_ids[row, len(prompt)] == expected[r.answer]
    assert tok.decode([int(data.input_ids[row, len(prompt)])]) == " " + r.options[r.answer]
  bad = MCQRecord("q?", ("infarction of heart", "eye"), 0, "toy", "X1", answer_style="option")
  with pytest.raises(ValueError, match="X1.*infarction of heart"):
    tokenize_mcq(tok, [bad], max_len=64)
