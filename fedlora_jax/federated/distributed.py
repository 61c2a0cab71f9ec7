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

from collections.abc import Sequence

import jax
from jax.sharding import Mesh

from fedlora_jax.federated.sharding import make_mesh, mesh_shape


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
    raise RuntimeError("jax.distributed is already initialized in this process")
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids,
                               initialization_timeout=initialization_timeout)
  except Exception as e:  # JaxRuntimeError / RuntimeError from the coordination service
    raise RuntimeError(
        f"jax.distributed.initialize failed for process {process_id} of {num_processes} with "
        f"coordinator {coordinator_address!r} (it must be called before any JAX computation, "
        f"and every process must reach the coordinator within {initialization_timeout} s): "
        f"{type(e).__name__}: {e}") from e


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
