"""Scoring free-text answers: normalised exact match against the record's correct answer.

A completion's answer is its first line. It is right when, normalised (lower case, runs of
anything but letters and digits turned into one space, trimmed), it equals the correct option's
text, or, for lettered questions (MedQA, MedMCQA, PubMedQA), the correct letter or the letter
followed by the option text ("B", "B. Aspirin", "b) aspirin").
"""

from __future__ import annotations

import re

from fedlora_jax.data.records import LETTERS, MCQRecord

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def normalise(text: str) -> str:
  return _NOT_ALNUM.sub(" ", text.lower()).strip()


def answer_texts(record: MCQRecord) -> list[str]:
  """The written forms of the right answer: the option text, and for lettered questions the
  letter and "<letter>. <text>"."""
  text = record.options[record.answer]
  if record.answer_style != "letter":
    return [text]
  letter = LETTERS[record.answer]
  return [text, letter, f"{letter}. {text}"]


def accepted_answers(record: MCQRecord) -> set[str]:
  """The normalised texts that count as the right answer."""
  return {normalise(t) for t in answer_texts(record)}


def answer_of(completion: str) -> str:
  """The answer part of a completion: its first non-empty line."""
  lines = [line for line in completion.splitlines() if line.strip()]
  return lines[0] if lines else ""


def is_correct(completion: str, record: MCQRecord) -> bool:
  return normalise(answer_of(completion)) in accepted_answers(record)
