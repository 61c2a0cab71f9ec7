"""MedQA, MedMCQA and PubMedQA from local files, mapped to `MCQRecord`.

Files are read with `datasets` (JSON / JSONL / parquet; never a hub download), or with `json` for
PubMedQA's original `ori_pqal.json` (one object keyed by PubMed id). Any problem raises `DataError`
naming the file, the record (0-based row, or the PubMed id) and the field.

* MedQA (USMLE): `question`, `options` ({"A": ..., "B": ...} or [{"key": "A", "value": ...}]),
  `answer_idx` (the letter); label = `meta_info` if present.
* MedMCQA: `question`, `opa`..`opd`, `cop` (the correct option: 0-based as on the HF hub, or
  1-based as in the original release; `cop_base=None` infers it from the file); label =
  `subject_name` if present.
* PubMedQA (PQA-L): `QUESTION`, `CONTEXTS`, `final_decision` in yes / no / maybe (or the HF layout
  `question`, `context.contexts`, `final_decision`, `pubid`); options are ("yes", "no", "maybe"),
  the question is the abstract's contexts followed by the question; label = the decision.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from fedlora_jax.data.records import LETTERS, DataError, MCQRecord

PUBMEDQA_OPTIONS = ("yes", "no", "maybe")
_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _read_rows(path: str) -> list[dict[str, Any]]:
  """All rows of a local JSON / JSONL / parquet file, through `datasets`."""
  if not os.path.isfile(path):
    raise DataError(path, "no such file")
  ext = os.path.splitext(path)[1].lower()
  if ext not in _FORMATS:
    raise DataError(path, f"unsupported extension {ext!r}; expected one of {sorted(_FORMATS)}")
  import datasets  # heavy import, only when a real dataset is read
  datasets.disable_progress_bars()
  read = datasets.Dataset.from_json if _FORMATS[ext] == "json" else datasets.Dataset.from_parquet
  with tempfile.TemporaryDirectory() as cache_dir:  # no stale cache when a file is rewritten
    try:
      ds = read(path, cache_dir=cache_dir, keep_in_memory=True)
    except Exception as e:  # datasets wraps parse errors in several types
      line = _bad_json_line(path) if _FORMATS[ext] == "json" else None
      cause = e.__cause__ or e
      raise DataError(path, f"cannot parse ({type(cause).__name__}: {cause})",
                      record=line) from e
    return ds.to_list()


def _bad_json_line(path: str) -> int | None:
  """0-based index of the first JSONL line that is not valid JSON, if the file is JSONL."""
  with open(path) as f:
    for i, line in enumerate(f):
      if line.strip():
        try:
          json.loads(line)
        except json.JSONDecodeError:
          return i
  return None


def _field(path: str, row: Mapping[str, Any], i: int | str, name: str,
           kind: type | tuple[type, ...] = str) -> Any:
  value = row.get(name)
  if value is None:
    raise DataError(path, "missing", record=i, field=name)
  if not isinstance(value, kind):
    raise DataError(path, f"expected {kind}, got {type(value).__name__}", record=i, field=name)
  if isinstance(value, str) and not value.strip():
    raise DataError(path, "empty", record=i, field=name)
  return value


def load_medqa(path: str) -> list[MCQRecord]:
  """MedQA (USMLE) records from a local JSON / JSONL / parquet file."""
  records = []
  for i, row in enumerate(_read_rows(path)):
    question = _field(path, row, i, "question")
    raw = _field(path, row, i, "options", (dict, list))
    if isinstance(raw, list):
      try:
        raw = {o["key"]: o["value"] for o in raw}
      except (KeyError, TypeError) as e:
        raise DataError(path, "a list of options needs 'key' and 'value'", record=i,
                        field="options") from e
    options = {k: v for k, v in raw.items() if v is not None}
    keys = sorted(options)
    if keys != list(LETTERS[:len(keys)]) or len(keys) < 2:
      raise DataError(path, f"option keys {keys} are not A, B, ...", record=i, field="options")
    answer = _field(path, row, i, "answer_idx")
    if answer not in options:
      raise DataError(path, f"answer {answer!r} is not one of {keys}", record=i,
                      field="answer_idx")
    records.append(MCQRecord(question, tuple(str(options[k]) for k in keys), keys.index(answer),
                             "medqa", str(row.get("id", i)), str(row.get("meta_info") or "")))
  return records


def _cop_base(path: str, rows: Sequence[Mapping[str, Any]]) -> int:
  """0 if some `cop` is 0, 1 if some is 4; both is an error; neither means 0 (HF convention)."""
  cops = {row.get("cop") for row in rows}
  if 0 in cops and 4 in cops:
    raise DataError(path, "cop has both 0 and 4: cannot tell 0- from 1-based", field="cop")
  return 1 if 4 in cops else 0


def load_medmcqa(path: str, cop_base: int | None = None) -> list[MCQRecord]:
  """MedMCQA records from a local JSON / JSONL / parquet file."""
  rows = _read_rows(path)
  base = _cop_base(path, rows) if cop_base is None else cop_base
  records = []
  for i, row in enumerate(rows):
    question = _field(path, row, i, "question")
    options = tuple(_field(path, row, i, f"op{c}") for c in "abcd")
    cop = _field(path, row, i, "cop", int)
    if isinstance(cop, bool) or not 0 <= cop - base < 4:
      raise DataError(path, f"{cop} is not a valid {base}-based option index", record=i,
                      field="cop")
    records.append(MCQRecord(question, options, cop - base, "medmcqa", str(row.get("id", i)),
                             str(row.get("subject_name") or "")))
  return records


def _pubmedqa_record(path: str, key: str, row: Mapping[str, Any], q: str, ctx: Any,
                     record_id: str) -> MCQRecord:
  question = _field(path, row, key, q)
  contexts = ctx if isinstance(ctx, list) else None
  if not contexts or not all(isinstance(c, str) for c in contexts):
    raise DataError(path, "expected a non-empty list of strings", record=key,
                    field="CONTEXTS" if q == "QUESTION" else "context.contexts")
  decision = _field(path, row, key, "final_decision")
  if decision not in PUBMEDQA_OPTIONS:
    raise DataError(path, f"{decision!r} is not one of {PUBMEDQA_OPTIONS}", record=key,
                    field="final_decision")
  text = " ".join(c.strip() for c in contexts) + "\n" + question.strip()
  return MCQRecord(text, PUBMEDQA_OPTIONS, PUBMEDQA_OPTIONS.index(decision), "pubmedqa",
                   record_id, decision)


def load_pubmedqa(path: str) -> list[MCQRecord]:
  """PubMedQA (PQA-L) records: `ori_pqal.json` (keyed by PubMed id) or the HF JSONL/parquet layout."""
  if path.endswith(".json") and os.path.isfile(path):
    try:
      with open(path) as f:
        data = json.load(f)
    except json.JSONDecodeError as e:
      raise DataError(path, f"invalid JSON at line {e.lineno}") from e
    if isinstance(data, dict):
      records = []
      for pmid, row in data.items():
        if not isinstance(row, dict):
          raise DataError(path, "expected an object", record=pmid)
        records.append(_pubmedqa_record(path, pmid, row, "QUESTION", row.get("CONTEXTS"), pmid))
      return records
  records = []
  for i, row in enumerate(_read_rows(path)):
    context = row.get("context")
    contexts = context.get("contexts") if isinstance(context, dict) else None
    records.append(_pubmedqa_record(path, str(i), row, "question", contexts,
                                    str(row.get("pubid", i))))
  return records


def load_extra_train(path: str) -> dict[str, list[MCQRecord]]:
  """{hospital: records} from JSON lines of `MCQRecord` fields plus "hospital": questions added
  to those hospitals' training sets (a privacy audit inserts its canaries this way)."""
  if not os.path.isfile(path):
    raise DataError(path, "no such file")
  out: dict[str, list[MCQRecord]] = {}
  with open(path) as f:
    for i, line in enumerate(f):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        hospital = row.pop("hospital")
        record = MCQRecord(**{**row, "options": tuple(row["options"])})
      except (ValueError, TypeError, KeyError) as e:
        raise DataError(path, f"malformed question ({e})", record=i) from e
      out.setdefault(str(hospital), []).append(record)
  if not out:
    raise DataError(path, "no questions")
  return out
