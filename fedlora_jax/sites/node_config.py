"""A SuperNode's own configuration (`flower-supernode --node-config '...'`): who it is, where its
data and key are. Nothing here travels to the server except the hospital name.

Keys (Flower's kebab-case):
  hospital           the hospital's registered name
  train-file         JSON lines of its training questions (`MCQRecord` fields)
  test-file          JSON lines of its test questions
  keystore           directory holding `<hospital>.key` (mode 0600, from enrolment)
  state-dir          where the node keeps client state, receipts and its JAX compilation cache
  base-model         local HF directory of the shared frozen base model
  server-public-key  hex BLS key of the server, pinned: receipts must verify under it
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from fedlora_jax.data import DataError, MCQRecord

KEYS = ("hospital", "train-file", "test-file", "keystore", "state-dir", "base-model",
        "server-public-key")


class NodeConfigError(ValueError):
  """A node config that cannot run (missing key, file or directory, bad value)."""


@dataclasses.dataclass(frozen=True)
class NodeConfig:
  hospital: str
  train_file: str
  test_file: str
  keystore: str
  state_dir: str
  base_model: str
  server_public_key: bytes

  @classmethod
  def parse(cls, raw: Mapping[str, Any]) -> NodeConfig:
    """Checks every key and path; raises NodeConfigError naming the first problem."""
    missing = [k for k in KEYS if k not in raw or raw[k] in ("", None)]
    unknown = sorted(set(raw) - set(KEYS))
    if missing or unknown:
      raise NodeConfigError(f"node config: missing {missing}, unknown {unknown} (keys: "
                            f"{', '.join(KEYS)})")
    v = {k.replace("-", "_"): str(raw[k]) for k in KEYS}
    for key in ("train_file", "test_file"):
      if not os.path.isfile(v[key]):
        raise NodeConfigError(f"node config: {key.replace('_', '-')} {v[key]} does not exist")
    for key in ("keystore", "base_model"):
      if not os.path.isdir(v[key]):
        raise NodeConfigError(f"node config: {key.replace('_', '-')} {v[key]} is not a directory")
    if not os.path.isfile(os.path.join(v["keystore"], v["hospital"] + ".key")):
      raise NodeConfigError(f"node config: hospital {v['hospital']!r} has no key in "
                            f"{v['keystore']} (unknown hospital name, or not enrolled)")
    try:
      pk = bytes.fromhex(v["server_public_key"])
    except ValueError:
      pk = b""
    if len(pk) != 48:
      raise NodeConfigError("node config: server-public-key must be 48 bytes of hex")
    v["server_public_key"] = pk
    return cls(**v)

  def flower_arg(self) -> str:
    """The `--node-config` argument of `flower-supernode` that parses back to this config."""
    values = {**{k.replace("_", "-"): getattr(self, k.replace("-", "_")) for k in KEYS},
              "server-public-key": self.server_public_key.hex()}
    return " ".join(f"{k}={json.dumps(str(values[k]))}" for k in KEYS)


def write_records(path: str, records: list[MCQRecord]) -> None:
  """A hospital's questions as JSON lines (what `read_records` reads)."""
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(dataclasses.asdict(r)) + "\n")


def read_records(path: str) -> list[MCQRecord]:
  records = []
  with open(path) as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        d = json.loads(line)
        records.append(MCQRecord(**{**d, "options": tuple(d["options"])}))
      except (ValueError, TypeError, KeyError) as e:
        raise DataError(path, f"malformed question ({e})", record=i) from e
  if not records:
    raise DataError(path, "no questions")
  return records
