"""The embedded default benchmark: ICD-10-CM clinical coding as multiple choice, per hospital.

Built from the code set shipped by the `simple-icd-10-cm` package (billable codes, their
descriptions, chapters and blocks); nothing is downloaded.

* Question: a diagnosis description. Options: 4 ICD-10-CM chapters (level "chapter") or 4 blocks of
  the answer's chapter (level "block"); distractors and the answer slot are drawn from the seed.
  A chapter is named by its title (`chapter_style="title"`, options lettered A-D, answered by the
  letter) or by a one-word label such as "circulatory" (`"label"`, `CHAPTER_LABELS`, answered by
  the label itself: `answer_style="option"`), which the tiny demo base learns far more easily.
* Splits: the billable codes are split into train / val / test globally (stratified by chapter)
  before any hospital gets data. Codes that differ only by their 7th character (initial /
  subsequent encounter, sequela, ...) form one group and stay in one split, and descriptions that
  occur under several codes are dropped, so no description (nor a near-copy) is in two splits.
* Hospitals: each `HospitalSpec` gives a case mix over the 21 clinical chapters (chapter 22,
  "codes for special purposes", is left out) and split sizes. Per-chapter counts follow the mix
  exactly (largest remainder), drawn without replacement from one shared pool, so no code is given
  to two hospitals.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from fedlora_jax.data.records import MCQRecord

SOURCE = "icd10cm"
SPLITS = ("train", "val", "test")
LEVELS = ("chapter", "block")
CHAPTER_STYLES = ("title", "label")
NUM_OPTIONS = 4
CLINICAL_CHAPTERS = tuple(str(i) for i in range(1, 22))  # chapter 22 (U codes) left out
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
QUESTION_TEMPLATE = "Which ICD-10-CM {what} classifies the diagnosis: {description}?"
_CACHE_VERSION = 2
CHAPTER_LABELS = {  # chapter id -> one-word label (style "label"; each one token, tokenization.py)
    "1": "infectious", "2": "neoplasms", "3": "blood", "4": "endocrine", "5": "mental",
    "6": "nervous", "7": "eye", "8": "ear", "9": "circulatory", "10": "respiratory",
    "11": "digestive", "12": "skin", "13": "musculoskeletal", "14": "genitourinary",
    "15": "pregnancy", "16": "perinatal", "17": "congenital", "18": "symptoms", "19": "injury",
    "20": "external", "21": "health"}
_RANGE_SUFFIX = re.compile(r"\s*\([A-Z0-9.]+-[A-Z0-9.]+\)\s*$")


@dataclasses.dataclass(frozen=True)
class HospitalSpec:
  """One hospital (client): its case mix over chapters and its split sizes.

  Case mix: every clinical chapter has weight 1, or the weight given in `emphasis`; if `dominant`
  is set, that chapter gets exactly `dominant_share` of the examples and the rest is spread over
  the other chapters in proportion to their weights.
  """

  name: str
  n_train: int
  n_val: int
  n_test: int
  dominant: str | None = None
  dominant_share: float = 0.7
  emphasis: tuple[tuple[str, float], ...] = ()

  def case_mix(self) -> dict[str, float]:
    """Probability of each clinical chapter, summing to 1."""
    weights = {ch: 1.0 for ch in CLINICAL_CHAPTERS}
    for chapter, weight in self.emphasis:
      _check_chapter(chapter)
      weights[chapter] = float(weight)
    if self.dominant is None:
      total = sum(weights.values())
      return {ch: w / total for ch, w in weights.items()}
    _check_chapter(self.dominant)
    rest = {ch: w for ch, w in weights.items() if ch != self.dominant}
    total = sum(rest.values())
    mix = {ch: (1.0 - self.dominant_share) * w / total for ch, w in rest.items()}
    mix[self.dominant] = self.dominant_share
    return {ch: mix[ch] for ch in CLINICAL_CHAPTERS}

  def size(self, split: str) -> int:
    return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


_PRIMARY_CARE = (("4", 2.0), ("5", 2.0), ("10", 2.0), ("13", 2.0), ("18", 2.0), ("21", 2.0))

DEFAULT_HOSPITALS: tuple[HospitalSpec, ...] = (
    HospitalSpec("cardiology", 400, 50, 150, dominant="9"),    # circulatory
    HospitalSpec("oncology", 350, 50, 150, dominant="2"),      # neoplasms
    HospitalSpec("trauma", 300, 50, 150, dominant="19"),       # injury, poisoning
    HospitalSpec("maternity", 250, 50, 150, dominant="15"),    # pregnancy, childbirth
    HospitalSpec("general", 500, 50, 150),                     # broad mix
    HospitalSpec("clinic", 50, 20, 150, emphasis=_PRIMARY_CARE),  # small, primary care
)


@dataclasses.dataclass(frozen=True)
class ClientSplits:
  """One client's records."""

  train: list[MCQRecord]
  val: list[MCQRecord]
  test: list[MCQRecord]

  def split(self, name: str) -> list[MCQRecord]:
    return getattr(self, name)


@dataclasses.dataclass(frozen=True)
class ICD10Benchmark:
  """The built benchmark: per hospital (in `hospitals` order) train / val / test records."""

  level: str
  seed: int
  hospitals: tuple[HospitalSpec, ...]
  clients: dict[str, ClientSplits]

  @property
  def client_names(self) -> list[str]:
    return [h.name for h in self.hospitals]

  def split(self, name: str) -> list[list[MCQRecord]]:
    """Per client, the records of split `name` ("train", "val" or "test")."""
    return [self.clients[c].split(name) for c in self.client_names]

  def dominant_shares(self, split: str = "train") -> dict[str, tuple[str, float]]:
    """Per client, (most frequent chapter, its share of the client's `split` records)."""
    return {c: dominant_chapter_share(self.clients[c].split(split)) for c in self.client_names}

  def summary(self) -> list[dict[str, object]]:
    """Per client: split sizes and the dominant chapter (name, train share)."""
    names = chapter_names()
    rows = []
    for c in self.client_names:
      chapter, share = dominant_chapter_share(self.clients[c].train)
      rows.append({"client": c, **{s: len(self.clients[c].split(s)) for s in SPLITS},
                   "dominant_chapter": names[chapter], "dominant_share": round(share, 3)})
    return rows


def dominant_chapter_share(records: Sequence[MCQRecord]) -> tuple[str, float]:
  """(most frequent label, its share of `records`); ties go to the first label in sorted order."""
  labels, counts = np.unique([r.label for r in records], return_counts=True)
  top = int(np.argmax(counts))
  return str(labels[top]), float(counts[top]) / len(records)


# ---------------------------------------------------------------------------------- code table


@dataclasses.dataclass(frozen=True)
class _CodeTable:
  codes: tuple[str, ...]          # billable codes, package order
  descriptions: tuple[str, ...]
  chapters: tuple[str, ...]       # "1".."21"
  blocks: tuple[str, ...]         # innermost block, e.g. "I20-I25"
  groups: tuple[str, ...]         # code without its 7th character


@functools.cache
def _icd() -> Any:
  """The `simple_icd_10_cm` module (imported on first use: it parses the code set, ~2 s)."""
  import simple_icd_10_cm
  return simple_icd_10_cm


def _strip_range(description: str) -> str:
  return _RANGE_SUFFIX.sub("", description)


def _check_chapter(chapter: str) -> None:
  if chapter not in CLINICAL_CHAPTERS:
    raise ValueError(f"unknown ICD-10-CM chapter {chapter!r}; expected one of 1..21")


@functools.cache
def chapter_names() -> dict[str, str]:
  """Chapter id ("1".."21") -> its title without the code range."""
  return {ch: _strip_range(_icd().get_description(ch)) for ch in CLINICAL_CHAPTERS}


@functools.cache
def _code_table() -> _CodeTable:
  icd = _icd()
  rows = []
  for code in icd.get_all_codes(True):
    if not icd.is_leaf(code) or icd.is_chapter_or_block(code):
      continue
    ancestors = icd.get_ancestors(code)
    chapter = ancestors[-1]
    if chapter not in CLINICAL_CHAPTERS:
      continue
    block = next(a for a in ancestors if icd.is_block(a))
    group = icd.get_parent(code) if icd.is_extended_subcategory(code) else code
    rows.append((code, icd.get_description(code), chapter, block, group))
  counts: dict[str, int] = {}
  for row in rows:
    counts[row[1]] = counts.get(row[1], 0) + 1
  rows = [row for row in rows if counts[row[1]] == 1]  # ambiguous descriptions dropped
  return _CodeTable(*map(tuple, zip(*rows)))


@functools.cache
def chapter_options(style: str = "title") -> dict[str, str]:
  """Chapter id -> the text naming it in options and public text: its title or its short label."""
  if style == "title":
    return chapter_names()
  if style == "label":
    return dict(CHAPTER_LABELS)
  raise ValueError(f"chapter_style must be one of {CHAPTER_STYLES}, got {style!r}")


@functools.cache
def _block_names() -> dict[str, str]:
  return {b: _strip_range(_icd().get_description(b)) for b in set(_code_table().blocks)}


def icd10_titles() -> list[str]:
  """Every chapter title, then every distinct block title."""
  return list(chapter_names().values()) + sorted(set(_block_names().values()))


def icd10_corpus() -> list[str]:
  """Unlabelled public text: every billable description, chapter and block title (nothing pairs a
  description with its chapter)."""
  return list(_code_table().descriptions) + icd10_titles()


def _excluded_groups(table: _CodeTable, exclude_codes: Collection[str]) -> set[str]:
  index = {code: i for i, code in enumerate(table.codes)}
  return {table.groups[index[c]] for c in exclude_codes if c in index}


def _balanced_public_codes(exclude_codes: Collection[str], n: int,
                           rng: np.random.Generator) -> list[int]:
  """n code indices outside `exclude_codes` and their 7th-character groups, n / 21 of every
  clinical chapter (largest remainder; a chapter with fewer public codes than its share repeats
  codes), shuffled. Balanced, so that no chapter (the injury chapter holds over half the codes)
  is more frequent than another in public text."""
  table = _code_table()
  excluded = _excluded_groups(table, exclude_codes)
  public = np.asarray([g not in excluded for g in table.groups])
  chapters = np.asarray(table.chapters)
  quota = _mix_counts({ch: 1 / len(CLINICAL_CHAPTERS) for ch in CLINICAL_CHAPTERS}, n)
  chosen = []
  for chapter in CLINICAL_CHAPTERS:
    pool = np.flatnonzero(public & (chapters == chapter))
    if not len(pool):
      raise ValueError(f"chapter {chapter} has no code outside the excluded groups")
    chosen.extend(rng.choice(pool, quota[chapter], replace=quota[chapter] > len(pool)).tolist())
  return [chosen[j] for j in rng.permutation(len(chosen))]


def public_descriptions(exclude_codes: Collection[str], n: int, *, seed: int = 0) -> list[str]:
  """n diagnosis descriptions, chapter-balanced (`_balanced_public_codes`), none of the given codes
  nor of their 7th-character groups (so no near copy of an excluded description). Unlabelled:
  nothing says which chapter or block a description belongs to."""
  table = _code_table()
  codes = _balanced_public_codes(exclude_codes, n, np.random.default_rng([seed, 13]))
  return [table.descriptions[i] for i in codes]


def format_drills(exclude_codes: Collection[str], n: int, *, level: str = "chapter",
                  seed: int = 0, chapter_style: str = "title") -> list[MCQRecord]:
  """n benchmark-format questions that teach the format and nothing else: each asks about a
  public description (codes drawn as for `public_descriptions`), lists 4 options drawn at random
  (chapters; at level "block", blocks of the description's chapter) and marks a random one as the
  answer.

  Pretraining data for the tiny base: it learns to answer with one of the listed options, but
  neither the options nor the answer say which chapter a description belongs to (with the true
  chapter always listed, as in a benchmark question, the options line alone would teach it), so
  what the base prefers before federated training is unrelated to the right chapter.
  """
  table = _code_table()
  rng = np.random.default_rng([seed, 12])
  chapter_names_ = list(chapter_options(chapter_style).values())
  out = []
  for i in _balanced_public_codes(exclude_codes, n, rng):
    record = _make_record(table, i, level, seed, chapter_style)  # its question text and style
    names = chapter_names_ if level == "chapter" else [
        _block_names()[b] for b in _chapter_blocks()[table.chapters[i]]]
    options = tuple(names[j] for j in rng.choice(len(names), NUM_OPTIONS, replace=False))
    out.append(dataclasses.replace(record, options=options,
                                   answer=int(rng.integers(NUM_OPTIONS))))
  return out


def icd10_prompt_vocabulary() -> list[str]:
  """The text every prompt repeats: the question stems, and the chapter and block titles."""
  stems = [QUESTION_TEMPLATE.format(what=w, description="").rstrip("?") for w in LEVELS]
  return stems + icd10_titles()


# ------------------------------------------------------------------------------------ building


def _split_codes(table: _CodeTable, seed: int) -> dict[str, dict[str, np.ndarray]]:
  """split -> chapter -> shuffled code indices; whole groups go to one split."""
  rng = np.random.default_rng([seed, 0])
  chapters = np.asarray(table.chapters)
  groups = np.asarray(table.groups)
  pools: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
  bounds = np.cumsum(SPLIT_FRACTIONS)[:-1]
  for chapter in CLINICAL_CHAPTERS:
    idx = np.flatnonzero(chapters == chapter)
    keys, group_of = np.unique(groups[idx], return_inverse=True)
    order = rng.permutation(len(keys))
    sizes = np.bincount(group_of, minlength=len(keys))[order]
    start = (np.cumsum(sizes) - sizes) / len(idx)       # share of codes before each group
    split_of_group = np.empty(len(keys), np.int64)
    split_of_group[order] = np.searchsorted(bounds, start, side="right")
    for s, name in enumerate(SPLITS):
      pools[name][chapter] = rng.permutation(idx[split_of_group[group_of] == s])
  return pools


def _mix_counts(mix: Mapping[str, float], n: int) -> dict[str, int]:
  """Largest-remainder rounding of n * mix (exact total n, deterministic)."""
  raw = np.array([mix[ch] * n for ch in CLINICAL_CHAPTERS])
  counts = np.floor(raw).astype(np.int64)
  order = np.argsort(-(raw - counts), kind="stable")
  counts[order[: n - counts.sum()]] += 1
  return dict(zip(CLINICAL_CHAPTERS, counts.tolist()))


def _make_record(table: _CodeTable, i: int, level: str, seed: int,
                 chapter_style: str = "title") -> MCQRecord:
  """The MCQ for code index i; distractors and answer slot depend only on (seed, code)."""
  rng = np.random.default_rng([seed, 1, i])
  chapter = table.chapters[i]
  if level == "chapter":
    names = chapter_options(chapter_style)
    answer = names[chapter]
    others = [names[c] for c in CLINICAL_CHAPTERS if c != chapter]
    what = "chapter"
  else:
    blocks = _chapter_blocks()[chapter]
    answer = _block_names()[table.blocks[i]]
    others = [_block_names()[b] for b in blocks if b != table.blocks[i]]
    what = "block"
  distractors = [others[j] for j in rng.choice(len(others), NUM_OPTIONS - 1, replace=False)]
  slot = int(rng.integers(NUM_OPTIONS))
  options = tuple(distractors[:slot] + [answer] + distractors[slot:])
  question = QUESTION_TEMPLATE.format(what=what, description=table.descriptions[i])
  style = "option" if level == "chapter" and chapter_style == "label" else "letter"
  return MCQRecord(question, options, slot, SOURCE, table.codes[i], chapter, style)


@functools.cache
def _chapter_blocks() -> dict[str, tuple[str, ...]]:
  table = _code_table()
  out: dict[str, set[str]] = {ch: set() for ch in CLINICAL_CHAPTERS}
  for chapter, block in zip(table.chapters, table.blocks):
    out[chapter].add(block)
  return {ch: tuple(sorted(b)) for ch, b in out.items()}


def _build(level: str, hospitals: Sequence[HospitalSpec], seed: int, chapter_style: str,
           train_scale: int = 1) -> dict[str, ClientSplits]:
  table = _code_table()
  pools = _split_codes(table, seed)
  taken = {s: {ch: 0 for ch in CLINICAL_CHAPTERS} for s in SPLITS}
  rng = np.random.default_rng([seed, 2])
  clients = {}
  for h, spec in enumerate(hospitals):
    mix = spec.case_mix()
    per_split = {}
    for split in SPLITS:
      chosen = []
      scale = train_scale if split == "train" else 1
      for chapter, count in _mix_counts(mix, scale * spec.size(split)).items():
        start = taken[split][chapter]
        pool = pools[split][chapter]
        if start + count > len(pool):
          raise ValueError(
              f"hospital {spec.name!r}: chapter {chapter} has only {len(pool)} {split} codes "
              f"({len(pool) - start} left); lower the {split} sizes or the chapter's share")
        chosen.extend(pool[start:start + count].tolist())
        taken[split][chapter] = start + count
      # the shared stream draws the scale-1 permutation, so validation and test sets (and the
      # default benchmark) are the same at every scale; a scaled training set has its own stream
      order = rng.permutation(len(chosen) // scale)
      if scale > 1:
        order = np.random.default_rng([seed, 2, scale, h]).permutation(len(chosen))
      chosen = [chosen[j] for j in order]
      per_split[split] = [_make_record(table, i, level, seed, chapter_style) for i in chosen]
    clients[spec.name] = ClientSplits(**per_split)
  return clients


# ------------------------------------------------------------------------------------- caching


def _cache_key(level: str, hospitals: Sequence[HospitalSpec], seed: int, chapter_style: str,
               train_scale: int) -> str:
  payload = {"version": _CACHE_VERSION, "package": importlib.metadata.version("simple-icd-10-cm"),
             "level": level, "seed": seed, "splits": SPLIT_FRACTIONS, "chapter_style": chapter_style,
             "hospitals": [dataclasses.asdict(h) for h in hospitals],
             **({"train_scale": train_scale} if train_scale != 1 else {})}
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _to_json(clients: Mapping[str, ClientSplits]) -> dict:
  return {name: {s: [dataclasses.asdict(r) for r in cs.split(s)] for s in SPLITS}
          for name, cs in clients.items()}


def _from_json(data: Mapping) -> dict[str, ClientSplits]:
  def record(d: Mapping) -> MCQRecord:
    return MCQRecord(**{**d, "options": tuple(d["options"])})
  return {name: ClientSplits(**{s: [record(d) for d in splits[s]] for s in SPLITS})
          for name, splits in data.items()}


def build_icd10_benchmark(*, level: str = "chapter",
                          hospitals: Sequence[HospitalSpec] = DEFAULT_HOSPITALS,
                          seed: int = 0, cache_dir: str | None = None,
                          chapter_style: str = "title", train_scale: int = 1) -> ICD10Benchmark:
  """Builds (or loads from `cache_dir`) the per-hospital ICD-10-CM MCQ benchmark; chapter options
  are named as `chapter_options(chapter_style)`. `train_scale` k gives every hospital k times its
  training records with the same case mix; validation and test sets do not change (each split
  draws from its own code pool)."""
  if level not in LEVELS:
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
  if isinstance(train_scale, bool) or not isinstance(train_scale, int) or train_scale < 1:
    raise ValueError(f"the training scale must be an integer >= 1, got {train_scale!r}")
  chapter_options(chapter_style)  # validates the style
  if level == "block" and chapter_style == "label":
    raise ValueError("chapter_style='label' names chapters; level='block' asks for blocks "
                     "(use chapter_style='title')")
  hospitals = tuple(hospitals)
  names = [h.name for h in hospitals]
  if len(set(names)) != len(names):
    raise ValueError(f"hospital names must be unique: {names}")
  path = None
  if cache_dir is not None:
    key = _cache_key(level, hospitals, seed, chapter_style, train_scale)
    path = os.path.join(cache_dir, f"icd10_{level}_s{seed}_{key}.json")
    if os.path.exists(path):
      with open(path) as f:
        return ICD10Benchmark(level, seed, hospitals, _from_json(json.load(f)))
  clients = _build(level, hospitals, seed, chapter_style, train_scale)
  if path is not None:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(_to_json(clients), f)
    os.replace(tmp, path)
  return ICD10Benchmark(level, seed, hospitals, clients)
