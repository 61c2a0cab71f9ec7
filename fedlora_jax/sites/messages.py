"""Payloads (dicts of array dicts and JSON-able parts) to Flower RecordDicts and back.

A payload part that is a {name: numpy array} dict travels as an ArrayRecord (the global adapter
under PEFT names, updates, state trees); any other part (task, attestation, metrics) as a
ConfigRecord holding its canonical JSON.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

_JSON = "json"


def _is_arrays(value: Any) -> bool:
  return isinstance(value, dict) and all(isinstance(v, np.ndarray) for v in value.values())


def to_records(payload: Mapping[str, Any]) -> RecordDict:
  out = RecordDict()
  for key, value in payload.items():
    if _is_arrays(value) and value:
      out[key] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in value.items()})
    elif _is_arrays(value):  # an empty tree
      out[key] = ConfigRecord({_JSON: json.dumps({"__arrays__": True})})
    else:
      out[key] = ConfigRecord({_JSON: json.dumps(value, sort_keys=True)})
  return out


def from_records(records: RecordDict) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, rec in records.items():
    if isinstance(rec, ArrayRecord):
      out[key] = {k: a.numpy() for k, a in rec.items()}
    else:
      value = json.loads(str(rec[_JSON]))
      out[key] = {} if value == {"__arrays__": True} else value
  return out


def payload_bytes(records: RecordDict) -> int:
  """Bytes of the arrays in a message (what dominates the traffic)."""
  return sum(rec.count_bytes() for rec in records.values() if isinstance(rec, ArrayRecord))
