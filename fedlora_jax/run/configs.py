"""Config-file helpers: variants load the config file they extend from the same folder."""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file given by path."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config file {path}")
  spec = importlib.util.spec_from_file_location(f"_fedlora_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def sibling_config(this_file: str, name: str) -> ml_collections.ConfigDict:
  """The config `name` (e.g. "default") next to `this_file` (pass `__file__`)."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(this_file)), f"{name}.py"))
