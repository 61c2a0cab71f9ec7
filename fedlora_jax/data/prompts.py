"""The prompt templates used for training and evaluation, one per answer style.

Style "letter" (MedQA, MedMCQA, PubMedQA)::

    Question: <question>
    A. <option 0>
    B. <option 1>
    ...
    Answer:

with the target continuation " A" / " B" / ... (a space and the letter). Style "option" (the
embedded benchmark's one-word chapter labels)::

    Question: <question>
    Options: <option 0>, <option 1>, ...
    Answer:

with the target " <option text>". The loss is on the answer token only, and evaluation compares
the next-token logits of the record's candidate answer tokens after "Answer:".
"""

from __future__ import annotations

from fedlora_jax.data.records import LETTERS, MCQRecord

QUESTION_HEADER = "Question:"
OPTIONS_HEADER = "Options:"
ANSWER_CUE = "Answer:"


def format_options(record: MCQRecord) -> str:
  """The option line(s) and the answer cue, starting with a newline."""
  if record.answer_style == "option":
    return f"\n{OPTIONS_HEADER} " + ", ".join(record.options) + "\n" + ANSWER_CUE
  lines = [f"{LETTERS[i]}. {text}" for i, text in enumerate(record.options)]
  return "\n" + "\n".join(lines) + "\n" + ANSWER_CUE


def format_prompt(record: MCQRecord) -> str:
  """The full prompt of a record, ending in "Answer:" (no trailing space)."""
  return f"{QUESTION_HEADER} {record.question}" + format_options(record)


def letter_text(idx: int) -> str:
  """The answer text of option `idx` in the letter style: " A", " B", ..."""
  return " " + LETTERS[idx]


def candidate_texts(record: MCQRecord) -> list[str]:
  """The answer text of each option, in option order (" A".. or " <option text>")."""
  if record.answer_style == "option":
    return [" " + text for text in record.options]
  return [letter_text(i) for i in range(len(record.options))]


def answer_text(record: MCQRecord) -> str:
  """The target text of `record`: the answer text of its correct option."""
  return candidate_texts(record)[record.answer]
