"""Where each hospital lives in a multi-process job, and where a round's clients sit on the mesh.

The `clients` axis of the mesh has R rows; each row is a group of devices inside one process
(the `model` axis never leaves a host). Every hospital gets a home process (contiguous blocks,
balanced), and only that process reads, tokenizes and batches its data. A round's client axis has
S = R * per_row slots, row i holding slots [i * per_row, (i + 1) * per_row); each process puts its
sampled hospitals on the slots of its own rows and fills the rest with padding (`PAD`), so a
hospital's records never leave its host and any client count runs on any mesh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from jax.sharding import Mesh

from fedlora_jax.federated.round import PAD


@dataclasses.dataclass(frozen=True)
class ClientPlacement:
  """Hospital -> process homes and per-round slot layouts.

  Attributes:
    row_process: [R] the process of each client row of the mesh.
    home: [N] the process that holds hospital n's data (and runs it).
  """

  row_process: tuple[int, ...]
  home: tuple[int, ...]

  @classmethod
  def create(cls, num_clients: int, mesh: Mesh | None = None) -> "ClientPlacement":
    """Homes for `num_clients` hospitals over the processes of `mesh` (None: one device)."""
    if mesh is None:
      rows = (0,)
    else:
      devices = mesh.devices.reshape(mesh.devices.shape[0], -1)  # [clients, model...]
      rows = tuple(int(d.process_index) for d in devices[:, 0])
      for i, row in enumerate(devices):
        if len({d.process_index for d in row}) != 1:
          raise ValueError(f"client row {i} of mesh {dict(mesh.shape)} spans processes "
                           f"{sorted({d.process_index for d in row})}: the model axis must stay "
                           "inside one host")
    processes = sorted(set(rows))
    home = tuple(processes[n * len(processes) // num_clients] for n in range(num_clients))
    return cls(rows, home)

  @property
  def num_rows(self) -> int:
    return len(self.row_process)

  def hospitals_of(self, process: int) -> list[int]:
    """Ids of the hospitals whose data lives on `process`."""
    return [n for n, p in enumerate(self.home) if p == process]

  def rows_of(self, process: int) -> list[int]:
    return [i for i, p in enumerate(self.row_process) if p == process]

  def slot_ids(self, client_ids: Sequence[int], capacity: int = 0) -> np.ndarray:
    """[S] int32 slot layout of a round of `client_ids` (sorted within each process; PAD rest).

    S = R * per_row with per_row the fewest slots per row that hold every process's clients, or
    with `capacity` > 0 the fewest that hold any `capacity` clients wherever they live (a
    Poisson-sampled round: its shape, hence its compilation, never depends on the sample).
    """
    by_process: dict[int, list[int]] = {p: [] for p in set(self.row_process)}
    for c in client_ids:
      by_process[self.home[int(c)]].append(int(c))
    need = {p: max(len(cs), capacity) for p, cs in by_process.items()}
    per_row = max(-(-need[p] // len(self.rows_of(p))) for p in by_process)
    per_row = max(per_row, 1)
    slots = np.full(self.num_rows * per_row, PAD, np.int32)
    for p, cs in by_process.items():
      positions = [i * per_row + j for i in self.rows_of(p) for j in range(per_row)]
      slots[positions[:len(cs)]] = sorted(cs)
    return slots

  def local_slots(self, slot_ids: np.ndarray, process: int) -> list[int]:
    """Positions of the slots whose rows live on `process` (real clients and padding)."""
    per_row = len(slot_ids) // self.num_rows
    return [i * per_row + j for i in self.rows_of(process) for j in range(per_row)]
