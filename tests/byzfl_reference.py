"""byzfl's aggregators without its package __init__ (which imports torchvision).

`byzfl/aggregators/aggregators.py` needs only numpy, torch and scipy: an empty `byzfl` package
object pointing at the installed directory lets it import while skipping `byzfl/__init__.py`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


def byzfl_aggregators():
  """The module `byzfl.aggregators.aggregators`, or a pytest skip saying why it is missing."""
  pytest.importorskip("torch", reason="byzfl's aggregators need torch (the CPU build)")
  if "byzfl" in sys.modules:
    return importlib.import_module("byzfl.aggregators.aggregators")
  spec = importlib.util.find_spec("byzfl")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("byzfl is not installed (pip install --no-deps byzfl==0.0.11)")
  pkg = types.ModuleType("byzfl")
  pkg.__path__ = list(spec.submodule_search_locations)
  pkg.__spec__ = spec
  sys.modules["byzfl"] = pkg
  return importlib.import_module("byzfl.aggregators.aggregators")
