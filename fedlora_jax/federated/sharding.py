"""Device mesh and shardings: a 2-D `clients x model` mesh.

`clients` is the data-parallel axis: LoRA params, optimizer and client states and batches carry a
leading client axis split over it; it may span hosts. `model` splits the frozen base, tensor
parallel: each base parameter declares logical axis names (`models.partitioning`) and one table,
`AxisRules`, maps them to mesh axes. The model axis stays inside a host (its devices are
consecutive devices of one process), so its per-layer collectives never cross the network. The
global adapter and LoRA leaves are replicated over `model`. Arrays are built with
`jax.make_array_from_callback`, which only touches the shards a process owns, so the same code
runs under `jax.distributed` across hosts.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

CLIENTS = "clients"
MODEL = "model"


def mesh_shape(clients: int, model: int, num_devices: int) -> tuple[int, int]:
  """Resolves config sizes (0 = infer: model 1, clients = all devices left) to (clients, model)."""
  model = model or 1
  if clients == 0:
    if num_devices % model:
      raise ValueError(f"mesh model={model} does not divide the {num_devices} devices")
    clients = num_devices // model
  return clients, model


def make_mesh(clients: int, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A `clients x model` mesh (Auto axes) over `devices` (default: the first clients * model).

  Row i of the mesh holds `model` consecutive devices of one process.
  Raises ValueError naming the mesh and the counts when the shape cannot be placed: sizes below 1,
  a different number of devices, a model row across processes, or processes holding different
  numbers of mesh devices (or none, in a multi-process job).
  """
  name = f"mesh clients={clients} x model={model}"
  if min(clients, model) < 1:
    raise ValueError(f"{name}: both axis sizes must be >= 1")
  n = clients * model
  if devices is None:
    available = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    if n > len(available):
      raise ValueError(f"{name} needs {n} devices, but the job has {len(available)} devices")
    devices = available[:n]
  elif len(devices) != n:
    raise ValueError(f"{name} needs {n} devices, got {len(devices)}")
  grid = np.asarray(devices, dtype=object).reshape(clients, model)
  per_process = collections.Counter(d.process_index for d in grid.flat)
  counts = sorted(set(per_process.values()))
  if len(counts) != 1 or (jax.process_count() > 1 and len(per_process) != jax.process_count()):
    raise ValueError(f"{name} spreads unevenly over the {jax.process_count()} processes "
                     f"({jax.local_device_count()} local devices each): mesh devices per process "
                     f"{dict(per_process)}; use all processes, each with the same count")
  if counts[0] % model or any(len({d.process_index for d in row}) > 1 for row in grid):
    raise ValueError(f"{name}: model={model} must divide the {counts[0]} mesh devices of each "
                     f"process, so that a model row stays inside one host")
  return Mesh(grid, (CLIENTS, MODEL), axis_types=(AxisType.Auto, AxisType.Auto))


@dataclasses.dataclass(frozen=True)
class AxisRules:
  """Logical parameter axis -> mesh axis (None: replicated). Tensor parallel over `model`:
  column-parallel q/k/v/gate/up (split outputs), row-parallel o/down (split inputs), the vocab of
  the embedding and head split, the residual stream and norms replicated."""

  vocab: str | None = MODEL
  embed: str | None = None
  heads: str | None = MODEL
  kv_heads: str | None = MODEL
  mlp: str | None = MODEL
  head_dim: str | None = None
  layers: str | None = None  # the layer axis of a scanned model's stacked params
  per_channel: str | None = None  # the size-1 input axis of a per-channel quantization scale

  def spec(self, axes: tuple[str, ...]) -> P:
    """PartitionSpec of a parameter with these logical axes."""
    unknown = [a for a in axes if a not in {f.name for f in dataclasses.fields(self)}]
    if unknown:
      raise ValueError(f"logical axes {unknown} have no rule in {self}")
    return P(*(getattr(self, a) for a in axes))


def _is_axes(x) -> bool:
  return isinstance(x, tuple) and all(isinstance(a, str) for a in x)


@dataclasses.dataclass(frozen=True)
class ClientSharding:
  """Shardings of the federated round's inputs and outputs on one `clients x model` mesh."""

  mesh: Mesh
  rules: AxisRules = AxisRules()

  @property
  def num_shards(self) -> int:
    """Size of the `clients` axis (client groups that run in parallel)."""
    return self.mesh.shape[CLIENTS]

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def by_client(self) -> NamedSharding:
    """Leading axis split over `clients`, replicated over `model`."""
    return NamedSharding(self.mesh, P(CLIENTS))

  def base(self, logical_axes: Any) -> Any:
    """Shardings of the frozen base from its logical axes (`models.base_logical_axes`)."""
    return jax.tree.map(lambda a: NamedSharding(self.mesh, self.rules.spec(a)), logical_axes,
                        is_leaf=_is_axes)

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

  def put(self, tree: Any, sharding: Any) -> Any:
    """Places host or device arrays with `sharding` (one, or a tree matching `tree`); copies only
    this process's shards (a global array spanning other processes is resharded on device)."""
    def one(path, x, s):
      x = np.asarray(x) if not isinstance(x, jax.Array) else x
      if isinstance(x, jax.Array) and x.sharding == s:
        return x
      for dim, axis in zip(x.shape, s.spec):
        parts = int(np.prod([self.mesh.shape[a] for a in np.atleast_1d(axis)])) if axis else 1
        if dim % parts:
          raise ValueError(f"{jax.tree_util.keystr(path)} of shape {x.shape} cannot be split as "
                           f"{s.spec} over the mesh {dict(self.mesh.shape)}")
      if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, s)  # a global array (multi-process): reshard in place
      host = np.asarray(x)
      return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])
    if isinstance(sharding, NamedSharding):
      return jax.tree.map_with_path(lambda p, x: one(p, x, sharding), tree)
    return jax.tree.map_with_path(one, tree, sharding)


def in_client_groups(fn, xs_c: Any, shards: int, group_size: int) -> Any:
  """`fn` over the leading client axis C of `xs_c`, `group_size` clients of each of `shards`
  contiguous blocks (the mesh's `clients` shards) at a time, the groups one after another.

  fn maps leaves [G, ...] to leaves [G, ...]; this equals `fn(xs_c)` for per-client `fn`. Each
  step takes the same rows from every shard, so every device works on its own clients throughout.
  group_size 0 (or >= C / shards) runs all clients at once.
  """
  c = jax.tree.leaves(xs_c)[0].shape[0]
  per_shard = c // shards
  if group_size == 0 or group_size >= per_shard:
    return fn(xs_c)
  if per_shard % group_size:
    raise ValueError(f"client_group_size={group_size} must divide the {per_shard} clients of "
                     f"each of the {shards} client shards ({c} clients)")
  steps = per_shard // group_size

  def to_steps(x):  # [C, ...] -> [steps, shards * group, ...]
    x = x.reshape((shards, steps, group_size) + x.shape[1:]).swapaxes(0, 1)
    return x.reshape((steps, shards * group_size) + x.shape[3:])

  def from_steps(y):  # [steps, shards * group, ...] -> [C, ...]
    y = y.reshape((steps, shards, group_size) + y.shape[2:]).swapaxes(0, 1)
    return y.reshape((c,) + y.shape[3:])

  return jax.tree.map(from_steps, jax.lax.map(fn, jax.tree.map(to_steps, xs_c)))
