"""The common multiple-choice record every dataset maps to, and the data error type."""

from __future__ import annotations

import dataclasses

LETTERS = "ABCDEFGHIJ"
ANSWER_STYLES = ("letter", "option")


@dataclasses.dataclass(frozen=True)
class MCQRecord:
  """One multiple-choice question.

  Attributes:
    question: the question text (for PubMedQA the abstract contexts, then the question).
    options: the option texts, in letter order (A, B, ...).
    answer: index of the correct option in `options`.
    source: dataset name ("icd10cm", "medqa", "medmcqa", "pubmedqa").
    id: identifier unique within the source (ICD code, dataset id, PubMed id).
    label: a category used by partitioners (ICD chapter, MedMCQA subject, ...).
    answer_style: how the question is answered: "letter" (options lettered A, B, ...; the answer
      is the letter) or "option" (the answer is the option's text, each a single token; the
      embedded benchmark's one-word chapter labels).
  """

  question: str
  options: tuple[str, ...]
  answer: int
  source: str
  id: str
  label: str = ""
  answer_style: str = "letter"

  def __post_init__(self) -> None:
    if self.answer_style not in ANSWER_STYLES:
      raise ValueError(f"record {self.id!r}: answer_style must be one of {ANSWER_STYLES}, "
                       f"got {self.answer_style!r}")
    if not 0 <= self.answer < len(self.options):
      raise ValueError(f"record {self.id!r}: answer {self.answer} out of range "
                       f"for {len(self.options)} options")
    if len(self.options) > len(LETTERS):
      raise ValueError(f"record {self.id!r}: at most {len(LETTERS)} options")


class DataError(ValueError):
  """A data file is missing or malformed; names the file, the record and the field."""

  def __init__(self, file: str, reason: str, *, record: int | str | None = None,
               field: str | None = None) -> None:
    self.file, self.record, self.field, self.reason = file, record, field, reason
    where = [f"{file}"]
    if record is not None:
      where.append(f"record {record}")
    if field is not None:
      where.append(f"field {field!r}")
    super().__init__(": ".join(where) + f": {reason}")
