"""Multi-host runs: start `jax.distributed` and build the global `clients x model` mesh.

Every process runs the same program. After `initialize`, `jax.devices()` lists the devices of all
processes and `global_mesh()` spans them; `FederatedRound(..., sharding=ClientSharding(mesh))` then
shards the client axis over every host's devices (and the base over each host's `model` rows). Each process builds the same host-side inputs
(same seed: batches, client ids, counts) and `ClientSharding.put` copies only the shards its own
devices hold, so no process ever needs the other processes' data on device.

    from fedlora_jax.federated import distributed
    distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=rank)  # before any JAX op
    sharding = ClientSharding(distributed.global_mesh())

On CPU, collectives across processes need `jax.config.update("jax_cpu_collectives_implementation",
"gloo")` before `initialize`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
from jax.sharding import Mesh

from fedlora_jax.federated.sharding import make_mesh, mesh_shape


class LaunchError(RuntimeError):
  """This process could not join the distributed job."""


def initialize(coordinator_address: str, num_processes: int, process_id: int,
               local_device_ids: int | Sequence[int] | None = None, *,
               initialization_timeout: int = 300) -> None:
  """Joins this process to a `jax.distributed` job (call once, before any JAX computation).

  Args:
    coordinator_address: "host:port" of process 0's coordinator service, reachable by all.
    num_processes: how many processes take part.
    process_id: this process's rank, in [0, num_processes).
    local_device_ids: the local devices this process uses (default: all visible).
    initialization_timeout: seconds to wait for all processes to connect.
  Raises:
    ValueError: malformed arguments.
    RuntimeError: already initialised, JAX already started computing, or the processes could
      not connect (the message names the coordinator and this process's rank).
  """
  host, sep, port = str(coordinator_address).rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"coordinator_address must be 'host:port', got {coordinator_address!r}")
  if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
    raise ValueError(f"num_processes must be a positive int, got {num_processes!r}")
  if (isinstance(process_id, bool) or not isinstance(process_id, int)
      or not 0 <= process_id < num_processes):
    raise ValueError(f"process_id must be an int in [0, {num_processes}), got {process_id!r}")
  if jax.distributed.is_initialized():
    raise LaunchError("jax.distributed is already initialized in this process")
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids,
                               initialization_timeout=initialization_timeout)
  except Exception as e:  # JaxRuntimeError / RuntimeError from the coordination service
    raise LaunchError(
        f"jax.distributed.initialize failed for process {process_id} of {num_processes} with "
        f"coordinator {coordinator_address!r} (it must be called before any JAX computation, "
        f"and every process must reach the coordinator within {initialization_timeout} s): "
        f"{type(e).__name__}: {e}") from e


def cluster_detected() -> str | None:
  """The cluster environment that `jax.distributed.initialize()` can configure itself from
  (a multi-worker TPU slice, a SLURM job step or an Open MPI launch of several tasks), or None."""
  env = os.environ
  if (len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
      or env.get("MEGASCALE_COORDINATOR_ADDRESS")):
    return "tpu"
  if int(env.get("SLURM_NTASKS", env.get("SLURM_STEP_NUM_TASKS", "1")) or 1) > 1 and (
      "SLURM_PROCID" in env):
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "openmpi"
  return None


def launch(coordinator_address: str | None = None, num_processes: int | None = None,
           process_id: int | None = None) -> str:
  """Joins a multi-process job if this is one; call first thing, before any JAX computation.

  With all three arguments: an explicit job (any machines, or several processes on localhost).
  With none: auto-detection on TPU pods, SLURM and Open MPI; otherwise one process. On CPU the
  cross-process collectives use gloo. Returns "single", "explicit" or the detected cluster.
  """
  given = [a is not None for a in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ValueError("--coordinator_address, --num_processes and --process_id go together: give "
                     "all three or none")
  kind = "explicit" if all(given) else cluster_detected()
  if kind is None:
    return "single"
  # Only the CPU backend reads this (CPU collectives across processes); GPUs and TPUs ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if kind == "explicit":
    initialize(coordinator_address, int(num_processes), int(process_id))
  else:
    try:
      jax.distributed.initialize()
    except Exception as e:  # pylint: disable=broad-except
      raise LaunchError(f"jax.distributed auto-initialisation on {kind} failed: "
                         f"{type(e).__name__}: {e}") from e
  return kind


def global_mesh(clients: int = 0, model: int = 0) -> Mesh:
  """The `clients x model` mesh over the devices of all processes (`config.mesh` sizes; 0 =
  infer: model 1, clients every device left). `model` stays inside a process, `clients` spans
  processes.

  Raises ValueError naming the mesh and the counts when the shape cannot be placed (see
  `sharding.make_mesh`): e.g. every process must own the same number of mesh devices, or some
  would hold no clients while the others wait on them.
  """
  return make_mesh(*mesh_shape(clients, model, jax.device_count()))


def shutdown() -> None:
  """Leaves the distributed job (a no-op when not initialised)."""
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()
