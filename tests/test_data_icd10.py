"""The embedded ICD-10-CM benchmark: determinism, no leakage, case mixes, caching."""

import collections
import os

import numpy as np
import pytest

from fedlora_jax.data import icd10
from fedlora_jax.data.icd10 import (DEFAULT_HOSPITALS, HospitalSpec, build_icd10_benchmark,
                                    chapter_names)

SPECIALTY = {"cardiology": "9", "oncology": "2", "trauma": "19", "maternity": "15"}


@pytest.fixture(scope="module")
def bench():
  return build_icd10_benchmark(seed=0)


def _all(bench, split):
  return [r for recs in bench.split(split) for r in recs]


def _description(record):
  return record.question.split("diagnosis: ", 1)[1][:-1]


def test_sizes_follow_specs(bench):
  assert bench.client_names == [h.name for h in DEFAULT_HOSPITALS]
  for spec in DEFAULT_HOSPITALS:
    for split in ("train", "val", "test"):
      assert len(bench.clients[spec.name].split(split)) == spec.size(split)
  assert len(bench.clients["clinic"].train) == 50
  assert min(len(bench.clients[c].train) for c in SPECIALTY) >= 250


def test_deterministic_per_seed(bench):
  again = build_icd10_benchmark(seed=0)
  other = build_icd10_benchmark(seed=1)
  assert again.clients == bench.clients
  same = sum(a == b for a, b in zip(_all(bench, "train"), _all(other, "train")))
  assert same / len(_all(bench, "train")) < 0.05


def test_no_description_or_code_shared(bench):
  descs = {s: {_description(r) for r in _all(bench, s)} for s in ("train", "val", "test")}
  assert not descs["train"] & descs["test"]
  assert not descs["train"] & descs["val"]
  assert not descs["val"] & descs["test"]
  # codes differing only in the 7th character (encounter) stay in one split
  icd = icd10._icd()
  group = lambda code: icd.get_parent(code) if icd.is_extended_subcategory(code) else code
  groups = {s: {group(r.id) for r in _all(bench, s)} for s in ("train", "val", "test")}
  assert not groups["train"] & groups["test"]
  ids = [r.id for s in ("train", "val", "test") for r in _all(bench, s)]
  total = sum(h.n_train + h.n_val + h.n_test for h in DEFAULT_HOSPITALS)
  assert len(ids) == len(set(ids)) == total == 3020  # no example in two clients or splits


def test_specialty_mixes_measured(bench):
  shares = bench.dominant_shares("train")
  for name, chapter in SPECIALTY.items():
    assert shares[name][0] == chapter
    assert shares[name][1] == pytest.approx(0.7, abs=0.005)
    test_chapter, test_share = bench.dominant_shares("test")[name]
    assert test_chapter == chapter and test_share == pytest.approx(0.7, abs=0.01)
  assert shares["general"][1] < 0.07   # 21 chapters, uniform: 1/21 = 0.048
  assert shares["clinic"][1] <= 0.1    # primary-care mix: 2/27 = 0.074
  # specialty clients' non-dominant examples still cover many chapters
  labels = collections.Counter(r.label for r in bench.clients["cardiology"].train)
  assert len(labels) == 21


def test_records_are_well_formed(bench):
  names = chapter_names()
  train = _all(bench, "train")
  for r in train:
    assert len(r.options) == 4 and len(set(r.options)) == 4
    assert r.options[r.answer] == names[r.label]
    assert r.source == "icd10cm"
  letters = np.bincount([r.answer for r in train], minlength=4) / len(train)
  assert letters.min() > 0.2 and letters.max() < 0.3


def test_block_level_options_are_blocks_of_the_chapter():
  bench = build_icd10_benchmark(level="block", seed=0)
  icd = icd10._icd()
  chapter_blocks = icd10._chapter_blocks()
  block_names = icd10._block_names()
  for r in bench.clients["oncology"].test[:50]:
    block = next(a for a in icd.get_ancestors(r.id) if icd.is_block(a))
    assert r.options[r.answer] == block_names[block]
    allowed = {block_names[b] for b in chapter_blocks[r.label]}
    assert set(r.options) <= allowed and len(set(r.options)) == 4


def test_label_style_renames_chapter_options_only(tmp_path, bench):
  labelled = build_icd10_benchmark(seed=0, chapter_style="label", cache_dir=str(tmp_path))
  labels = icd10.CHAPTER_LABELS
  assert sorted(labels) == sorted(icd10.CLINICAL_CHAPTERS) and len(set(labels.values())) == 21
  titles = {title: labels[ch] for ch, title in chapter_names().items()}
  for split in icd10.SPLITS:
    for plain, short in zip(_all(bench, split), _all(labelled, split)):
      assert (short.id, short.question, short.answer) == (plain.id, plain.question, plain.answer)
      assert short.options == tuple(titles[o] for o in plain.options)
      assert short.options[short.answer] == labels[short.label]
      assert (short.answer_style, plain.answer_style) == ("option", "letter")
  # a second style is a second cache file, not a hit on the first
  build_icd10_benchmark(seed=0, cache_dir=str(tmp_path))
  assert len(os.listdir(tmp_path)) == 2
  with pytest.raises(ValueError, match="chapter_style"):
    build_icd10_benchmark(seed=0, chapter_style="roman")
  with pytest.raises(ValueError, match="level='block'"):
    build_icd10_benchmark(seed=0, chapter_style="label", level="block")


def test_cache_roundtrip(tmp_path, bench):
  built = build_icd10_benchmark(seed=0, cache_dir=str(tmp_path))
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].endswith(".json")
  loaded = build_icd10_benchmark(seed=0, cache_dir=str(tmp_path))
  assert loaded.clients == built.clients == bench.clients
  build_icd10_benchmark(seed=2, cache_dir=str(tmp_path))
  assert len(os.listdir(tmp_path)) == 2


def test_custom_hospitals_and_errors():
  specs = (HospitalSpec("eye", 40, 5, 20, dominant="7", dominant_share=0.9),
           HospitalSpec("mind", 30, 5, 20, emphasis=(("5", 10.0),)))
  bench = build_icd10_benchmark(hospitals=specs, seed=3)
  assert bench.dominant_shares()["eye"] == ("7", 0.9)
  assert bench.dominant_shares()["mind"] == ("5", pytest.approx(10 / 30))
  with pytest.raises(ValueError, match="chapter 3 has only"):
    build_icd10_benchmark(hospitals=(HospitalSpec("big", 10, 5, 10_000, dominant="3"),), seed=0)
  with pytest.raises(ValueError, match="unknown ICD-10-CM chapter"):
    build_icd10_benchmark(hospitals=(HospitalSpec("x", 10, 5, 5, dominant="22"),), seed=0)
  with pytest.raises(ValueError, match="level"):
    build_icd10_benchmark(level="code", seed=0)


def test_training_scale_keeps_mixes_and_evaluation_sets(bench):
  """data.scale: k times the training records with the same case mix; val and test unchanged;
  still no code in two splits; the largest scale the code set allows is refused beyond."""
  big = build_icd10_benchmark(seed=0, train_scale=3)
  for spec in DEFAULT_HOSPITALS:
    assert len(big.clients[spec.name].train) == 3 * spec.n_train
    assert big.clients[spec.name].val == bench.clients[spec.name].val
    assert big.clients[spec.name].test == bench.clients[spec.name].test
  for spec in DEFAULT_HOSPITALS:  # every chapter's share of the training set, at most 1/n apart
    small = collections.Counter(r.label for r in bench.clients[spec.name].train)
    large = collections.Counter(r.label for r in big.clients[spec.name].train)
    for chapter in set(small) | set(large):
      assert large[chapter] / (3 * spec.n_train) == pytest.approx(
          small[chapter] / spec.n_train, abs=1 / spec.n_train)
  codes = {s: {r.id for r in _all(big, s)} for s in ("train", "val", "test")}
  assert not codes["train"] & (codes["val"] | codes["test"])
  assert len(codes["train"]) == 3 * sum(h.n_train for h in DEFAULT_HOSPITALS)
  with pytest.raises(ValueError, match="chapter 9 has only 999 train codes"):
    build_icd10_benchmark(seed=0, train_scale=4)
  for bad in (0, 1.5, True):
    with pytest.raises(ValueError, match="training scale must be an integer >= 1"):
      build_icd10_benchmark(seed=0, train_scale=bad)
