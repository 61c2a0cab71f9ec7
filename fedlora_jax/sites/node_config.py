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
Optional, the hospital's own privacy policy (the server cannot lift it):
  max-epsilon        every update leaving this node must be DP-SGD noised, and all of them
                     together (every job, as recorded in state-dir) stay within this epsilon
  dp-delta           the delta of that epsilon (default 1e-5)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from fedlora_jax.data import DataError, MCQRecord

KEYS = ("hospital", "train-file", "test-file", "keystore", "state-dir", "base-model",
        "server-public-key")
OPTIONAL_KEYS = ("max-epsilon", "dp-delta")
DEFAULT_DP_DELTA = 1e-5


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
  max_epsilon: float | None = None  # None: no policy of its own (the job's DP, if any)
  dp_delta: float = DEFAULT_DP_DELTA

  @classmethod
  def parse(cls, raw: Mapping[str, Any]) -> NodeConfig:
    """Checks every key and path; raises NodeConfigError naming the first problem."""
    missing = [k for k in KEYS if k not in raw or raw[k] in ("", None)]
    unknown = sorted(set(raw) - set(KEYS) - set(OPTIONAL_KEYS))
    if missing or unknown:
      raise NodeConfigError(f"node config: missing {missing}, unknown {unknown} (keys: "
                            f"{', '.join(KEYS)}; optional: {', '.join(OPTIONAL_KEYS)})")
    policy = _privacy_policy(raw)
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
    return cls(**v, **policy)

  def flower_arg(self) -> str:
    """The `--node-config` argument of `flower-supernode` that parses back to this config."""
    values = {**{k.replace("_", "-"): getattr(self, k.replace("-", "_")) for k in KEYS},
              "server-public-key": self.server_public_key.hex()}
    if self.max_epsilon is not None:
      values.update({"max-epsilon": repr(self.max_epsilon), "dp-delta": repr(self.dp_delta)})
    return " ".join(f"{k}={json.dumps(str(v))}" for k, v in values.items())


def _privacy_policy(raw: Mapping[str, Any]) -> dict[str, float]:
  """{max_epsilon, dp_delta} from the optional keys ({} when max-epsilon is not given)."""
  if raw.get("max-epsilon") in ("", None):
    if raw.get("dp-delta") not in ("", None):
      raise NodeConfigError("node config: dp-delta without max-epsilon")
    return {}
  try:
    eps = float(raw["max-epsilon"])
    delta = float(raw.get("dp-delta") or DEFAULT_DP_DELTA)
  except (TypeError, ValueError):
    raise NodeConfigError(f"node config: max-epsilon {raw['max-epsilon']!r} and dp-delta "
                          f"{raw.get('dp-delta')!r} must be numbers") from None
  if not (0 < eps < float("inf") and 0 < delta < 1):
    raise NodeConfigError(f"node config: max-epsilon must be > 0 and finite and dp-delta in "
                          f"(0, 1), got {eps:g} and {delta:g}")
  return {"max_epsilon": eps, "dp_delta": delta}


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
