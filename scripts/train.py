"""Runs (or resumes) a federated LoRA job, on one process or as one process of a pod.

    python scripts/train.py --config=configs/default.py --config.workdir=runs/demo \
        [--config.fed.rounds=20 --config.fed.algorithm=fedprox ...]

Several processes (every one runs the same command; see BUILD.md): on TPU pods, SLURM (`srun`) and
Open MPI the job is detected; elsewhere give all three of

    --coordinator_address=HOST:PORT --num_processes=N --process_id=I

A workdir with checkpoints is resumed (config.resume=True); one holding a different run is refused.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from fedlora_jax.compile_cache import enable_compilation_cache

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Run config file.",
                                          lock_config=True)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's jax.distributed coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's rank in [0, N).")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from fedlora_jax.run.cli import run_cli  # pylint: disable=import-outside-toplevel

  def job():
    # Before anything touches a JAX backend: join the pod when this is one.
    from fedlora_jax.federated import distributed  # pylint: disable=import-outside-toplevel
    distributed.launch(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _CONFIG.value.model.compile_cache:
      enable_compilation_cache(os.path.join(os.path.expanduser(_CONFIG.value.cache_dir),
                                            "jax_cache"))
    from fedlora_jax.run.experiment import run  # pylint: disable=import-outside-toplevel
    return run(_CONFIG.value)

  return run_cli(job)


if __name__ == "__main__":
  flags.FLAGS.alsologtostderr = True
  app.run(main)
