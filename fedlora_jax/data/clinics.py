"""Many small clients: each hospital's training records split into clinics (`data.clinics`).

Client-level DP protects one client among many; six hospitals are too few. With `data.clinics`
k (a multiple of the number of hospitals), hospital h's training records are dealt into k / H
clinics named `<hospital>-<i>` in contiguous, near-equal chunks of the benchmark's (already
shuffled) order, so every clinic keeps its parent's case mix and the federation stays non-IID
across hospitals. Evaluation stays on the hospitals' test sets: the global model is shared, and
scoring it per hospital does not grow with the number of clinics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def check_clinics(clinics: int, train_sizes: Sequence[int]) -> None:
  """Refuses a clinic count the hospitals (with `train_sizes` records each) cannot split into."""
  hospitals = len(train_sizes)
  if isinstance(clinics, bool) or not isinstance(clinics, int) or clinics < 0:
    raise ValueError(f"data.clinics={clinics!r} must be an integer >= 0 (0: the hospitals)")
  if clinics % hospitals:
    raise ValueError(f"data.clinics={clinics} is not a multiple of the {hospitals} hospitals")
  per = clinics // hospitals
  if per > min(train_sizes):
    raise ValueError(f"data.clinics={clinics} gives {per} clinics per hospital, more than the "
                     f"smallest hospital's {min(train_sizes)} training records (raise data.scale)")


def clinic_names(hospitals: Sequence[str], clinics: int) -> list[str]:
  """[clinics] names, hospital by hospital: `<hospital>-<i>` (i zero-padded)."""
  per = clinics // len(hospitals)
  width = len(str(per - 1))
  return [f"{h}-{i:0{width}d}" for h in hospitals for i in range(per)]


def split_records(records: Sequence[T], parts: int) -> list[list[T]]:
  """`records` in `parts` contiguous chunks whose sizes differ by at most one."""
  bounds = np.linspace(0, len(records), parts + 1).round().astype(int)
  return [list(records[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
