"""The one prompt template used for training and evaluation.

    Question: <question>
    A. <option 0>
    B. <option 1>
    ...
    Answer:

The target continuation is " A" / " B" / ... (a space and the letter); the loss is on it only,
and evaluation scores the next-token logits of the option letters after "Answer:".
"""

from __future__ import annotations

from fedlora_jax.data.records import LETTERS, MCQRecord

QUESTION_HEADER = "Question:"
ANSWER_CUE = "Answer:"


def format_options(options: tuple[str, ...] | list[str]) -> str:
  """The lettered option lines and the answer cue, starting with a newline."""
  lines = [f"{LETTERS[i]}. {text}" for i, text in enumerate(options)]
  return "\n" + "\n".join(lines) + "\n" + ANSWER_CUE


def format_prompt(record: MCQRecord) -> str:
  """The full prompt of a record, ending in "Answer:" (no trailing space)."""
  return f"{QUESTION_HEADER} {record.question}" + format_options(record.options)


def answer_text(idx: int) -> str:
  """The target text of option `idx`: " A", " B", ..."""
  return " " + LETTERS[idx]
