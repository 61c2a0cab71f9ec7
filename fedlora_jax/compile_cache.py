"""JAX's persistent compilation cache: a fresh process loads compiled programs instead of
recompiling them (scripts/train.py and scripts/benchmark.py turn it on under the cache directory).
"""

from __future__ import annotations

import os

import jax


def enable_compilation_cache(directory: str) -> str:
  """Caches every compiled program (no minimum compile time or size) in `directory`, created if
  missing; returns the absolute directory. Call before the first compilation."""
  directory = os.path.abspath(os.path.expanduser(directory))
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory
