"""Shared behaviour of the absl entry points in scripts/."""

from __future__ import annotations

import logging as std_logging
import sys
from collections.abc import Callable

from absl import logging


def quiet_library_logs() -> None:
  """Keep INFO lines of this project only (orbax and jax log every step at INFO)."""

  def ours(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "fedlora_jax" in record.pathname

  logging.get_absl_handler().addFilter(ours)


def run_cli(fn: Callable[[], object]) -> int:
  """Runs `fn`; a bad input (ValueError, OSError, KeyError) is one clear line and exit code 2."""
  from fedlora_jax.federated.distributed import LaunchError  # pylint: disable=import-outside-toplevel
  quiet_library_logs()
  try:
    fn()
  except (ValueError, OSError, KeyError, LaunchError) as e:
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    return 2
  return 0
