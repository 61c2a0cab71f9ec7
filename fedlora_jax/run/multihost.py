"""The few host-side exchanges a multi-process run needs: small JSON messages and slot rows.

Every function here is a collective when several processes run (each must call it, in the same
order, never under a `process_index() == 0` branch) and a cheap local operation with one process.
Only small things cross hosts: digests, attestations, verdicts, metrics; never a hospital's data
or a whole [C, ...] tree of client updates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Sharding


def is_writer() -> bool:
  """Process 0 writes the run directory's files (config, metrics, ledger, report, adapters)."""
  return jax.process_index() == 0


TIMEOUT_S = 900  # how long a process waits for the others at an exchange (setup, the server)
_exchanges = [0]  # every process makes the same exchanges in the same order: a shared counter


def _client():
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  client = distributed.global_state.client
  if client is None:
    raise RuntimeError("several JAX processes but no jax.distributed client")
  return client


def allgather_json(value: Any) -> list[Any]:
  """Every process's JSON-able `value`, in process order, on every process.

  Goes through the coordination service's key-value store (not a device collective), so a
  process may wait long for the others (process 0 preparing the base, verifying signatures,
  writing the report) without tripping the collectives' 30 s context deadline.
  """
  if jax.process_count() == 1:
    return [value]
  _exchanges[0] += 1
  client, key = _client(), f"fedlora_jax/exchange/{_exchanges[0]}"
  client.key_value_set(f"{key}/{jax.process_index()}", json.dumps(value))
  return [json.loads(client.blocking_key_value_get(f"{key}/{p}", TIMEOUT_S * 1000))
          for p in range(jax.process_count())]


def broadcast_json(value: Any) -> Any:
  """Process 0's JSON-able `value` on every process (the others pass anything, e.g. None)."""
  if jax.process_count() == 1:
    return value
  return allgather_json(value if is_writer() else None)[0]


def on_writer(fn: Callable[[], Any]) -> Any:
  """Runs `fn` on process 0 (the server's work: the ledger, files) and gives its JSON-able
  result to every process; an error there is raised on every process, so none waits forever."""
  if jax.process_count() == 1:
    return fn()
  outcome = None
  if is_writer():
    try:
      outcome = {"value": fn()}
    except Exception as e:  # pylint: disable=broad-except
      outcome = {"error": f"{type(e).__name__}: {e}"}
      broadcast_json(outcome)
      raise
  outcome = broadcast_json(outcome)
  if "error" in outcome:
    raise ValueError(f"process 0 failed: {outcome['error']}")
  return outcome["value"]


def sync(name: str) -> None:
  """A barrier across processes (a no-op with one)."""
  if jax.process_count() > 1:
    _exchanges[0] += 1
    _client().wait_at_barrier(f"fedlora_jax/barrier/{_exchanges[0]}/{name}", TIMEOUT_S * 1000)


def host_rows(x: jax.Array) -> dict[int, np.ndarray]:
  """{row index along axis 0: that row as numpy} for every row this process holds.

  Rows split over this host's devices (the model axis) are put back together; other processes'
  rows are not touched.
  """
  if not isinstance(x, jax.Array):
    return {i: np.asarray(row) for i, row in enumerate(x)}
  pieces: dict[int, np.ndarray] = {}
  for shard in x.addressable_shards:
    rows = range(x.shape[0])[shard.index[0]]
    data = np.asarray(shard.data)
    for k, row in enumerate(rows):
      if row not in pieces:
        pieces[row] = np.zeros(x.shape[1:], x.dtype)
      pieces[row][shard.index[1:]] = data[k]
  return pieces


def host_value(x: jax.Array) -> np.ndarray:
  """A replicated (or host-local) array as numpy, from this process's own shards."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.sharding.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  rows = host_rows(x)
  if len(rows) != x.shape[0]:
    raise ValueError(f"array {x.shape} with sharding {x.sharding} is not held whole on this host")
  return np.stack([rows[i] for i in range(x.shape[0])])


def gather_rows(x: jax.Array) -> np.ndarray:
  """A small [S, ...] array sharded over slots, whole on every process (e.g. per-client metrics)."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  out = np.zeros(x.shape, x.dtype)
  for part in allgather_json({s: row.tolist() for s, row in host_rows(x).items()}):
    for s, row in part.items():
      out[int(s)] = row
  return out


def global_from_rows(shape: Sequence[int], dtype, sharding: Sharding,
                     row: Callable[[int], np.ndarray]) -> jax.Array:
  """A global [S, ...] array whose row s is `row(s)`; only this process's rows are asked for."""
  def shard(index):
    rows = range(shape[0])[index[0]]
    out = np.stack([row(s) for s in rows]) if len(rows) else np.zeros((0, *shape[1:]), dtype)
    return out.astype(dtype)[(slice(None),) + tuple(index[1:])]
  return jax.make_array_from_callback(tuple(shape), sharding, shard)
