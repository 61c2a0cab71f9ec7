"""What the numbers were measured on, and how much memory a piece of work took."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import threading
import time
from typing import Any


def machine_info() -> dict[str, Any]:
  """CPU, memory, accelerator, library versions and the environment knobs that change speed."""
  import jax

  info: dict[str, Any] = {
      "platform": platform.platform(),
      "python": platform.python_version(),
      "cpu_model": _cpu_model(),
      "cpu_count": os.cpu_count(),
      "load_average_at_start": os.getloadavg(),
      "jax_backend": jax.default_backend(),
      "devices": [str(d.device_kind) for d in jax.devices()],
      "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OPENBLAS_CORETYPE", "OMP_NUM_THREADS",
                                               "JAX_PLATFORMS", "MKL_NUM_THREADS")},
      "versions": _versions(),
  }
  try:
    import psutil
    info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
  except ImportError:  # pragma: no cover
    pass
  return info


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:  # pragma: no cover
    pass
  return platform.processor()


def _versions() -> dict[str, str | None]:
  import importlib.metadata as md
  out = {}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers", "peft",
               "py-ecc", "py-arkworks-bls12381", "blspy"):
    try:
      out[name] = md.version(name)
    except md.PackageNotFoundError:
      out[name] = None
  return out


def rss_bytes() -> int:
  """Current resident set size of this process."""
  try:
    import psutil
    return psutil.Process().memory_info().rss
  except ImportError:  # pragma: no cover
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
  """Peak RSS of the process so far (monotonic: covers everything run before)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
  """Samples this process's RSS in a thread; `peak` and `start` in bytes after the block."""

  def __init__(self, interval_s: float = 0.005):
    self.interval_s = interval_s
    self.start = self.peak = 0
    self._stop = threading.Event()

  def __enter__(self) -> "PeakRSS":
    self.start = self.peak = rss_bytes()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, rss_bytes())
      time.sleep(self.interval_s)

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, rss_bytes())

  @property
  def growth(self) -> int:
    return self.peak - self.start


def device_memory() -> dict[str, Any] | None:
  """`memory_stats()` of the first device (GPU/TPU; None on CPU, which has none)."""
  import jax
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit", "largest_alloc_size")
  return {k: int(stats[k]) for k in keys if k in stats}


@contextlib.contextmanager
def timer():
  """with timer() as t: ...; t() -> seconds (after the block)."""
  box = [0.0]
  t0 = time.perf_counter()
  try:
    yield lambda: box[0]
  finally:
    box[0] = time.perf_counter() - t0
