"""Device mesh and shardings: the client axis is split over a `clients` mesh axis.

LoRA params, optimizer and client states and batches carry a leading client axis and are sharded
over `clients`; the frozen base and the global adapter are replicated (one copy per device, never
one per client). Arrays are built with `jax.make_array_from_callback`, which only touches the
shards a process owns, so the same code runs under `jax.distributed` across hosts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

CLIENTS = "clients"
MODEL = "model"


def make_mesh(clients: int | None = None, model: int = 1) -> Mesh:
  """A `clients x model` mesh over the first clients * model devices (all by default).

  Devices are taken in (process, id) order, so each client row (`model` consecutive devices)
  lies inside one process when `model` divides the per-process device count.
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  clients = len(devices) // model if clients is None else clients
  if clients < 1 or model < 1 or clients * model > len(devices):
    raise ValueError(f"a mesh of clients={clients} x model={model} needs {clients * model} "
                     f"devices; this job has {len(devices)}")
  grid = np.asarray(devices[:clients * model], dtype=object).reshape(clients, model)
  return Mesh(grid, (CLIENTS, MODEL), axis_types=(AxisType.Auto, AxisType.Auto))


@dataclasses.dataclass(frozen=True)
class ClientSharding:
  """Shardings of the federated round's inputs and outputs on one mesh."""

  mesh: Mesh

  @property
  def num_shards(self) -> int:
    return self.mesh.shape[CLIENTS]

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def by_client(self) -> NamedSharding:
    return NamedSharding(self.mesh, P(CLIENTS))

  def leading(self, num: int) -> NamedSharding:
    """Shard a leading axis of length `num` over clients when it divides evenly, else replicate."""
    return self.by_client if num % self.num_shards == 0 else self.replicated

  def num_slots(self, num_clients: int) -> int:
    """`num_clients` rounded up to a multiple of the client rows (the rest are padding slots)."""
    return -(-num_clients // self.num_shards) * self.num_shards

  def check_clients(self, num: int) -> None:
    if num % self.num_shards:
      raise ValueError(f"{num} client slots cannot be split over the {self.num_shards} client "
                       f"rows of mesh {dict(self.mesh.shape)}; pad the round to "
                       f"{self.num_slots(num)} slots (FederatedRound.num_slots)")

  def put(self, tree: Any, sharding: NamedSharding) -> Any:
    """Places host or device arrays with `sharding` (copies only this process's shards; a global
    array spanning other processes is resharded on device instead)."""
    def one(x):
      x = np.asarray(x) if not isinstance(x, jax.Array) else x
      if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
      if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # a global array (multi-process): reshard in place
      host = np.asarray(x)
      return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
    return jax.tree.map(one, tree)
