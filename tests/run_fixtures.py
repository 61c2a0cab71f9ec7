"""A tiny, fast version of the default config for end-to-end tests."""

from __future__ import annotations

import os

from fedlora_jax.run.configs import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "configs", "default.py")

TINY_OVERRIDES = {
    "model.hidden_size": 64, "model.intermediate_size": 128, "model.num_hidden_layers": 1,
    "model.num_attention_heads": 2, "model.num_key_value_heads": 1, "model.head_dim": 32,
    "pretrain.steps": 10, "pretrain.batch_size": 4, "pretrain.seq_len": 32,
    "pretrain.descriptions": 100, "pretrain.format_drills": 50,
    "lora.rank": 4, "fed.rounds": 2, "fed.local_steps": 2, "fed.batch_size": 4,
    "eval.max_test_per_client": 16, "eval.batch_size": 16, "data.tokenizer_vocab": 1024,
}


def tiny_config(workdir: str, cache_dir: str, **overrides):
  cfg = load_config_file(DEFAULT)
  for key, value in {**TINY_OVERRIDES, **overrides}.items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  cfg.workdir = workdir
  cfg.cache_dir = cache_dir
  return cfg


def default_config(**overrides):
  """configs/default.py with `overrides` given as section__leaf=value."""
  cfg = load_config_file(DEFAULT)
  for key, value in overrides.items():
    section, leaf = key.split("__")
    cfg[section][leaf] = value
  return cfg


def cli_flags(cfg_overrides: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in cfg_overrides.items()]
