"""A federated round over abstract shapes only (no weights): for memory and compile-time figures."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from flax import nnx

from fedlora_jax import federated, models
from fedlora_jax.federated.round import BATCH_KEYS


@dataclasses.dataclass
class AbstractRound:
  """A `FederatedRound` and `jax.ShapeDtypeStruct` trees of its inputs."""

  round: federated.FederatedRound
  state: Any
  base: Any
  batches: dict
  clients: int

  def lower(self):
    return self.round.lower(self.state, self.base, self.batches, np.arange(self.clients),
                            np.ones(self.clients))

  @property
  def base_bytes(self) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.base))

  def argument_bytes_per_device(self) -> int:
    """Bytes of the round's arguments one device holds, from the shapes and the round's input
    shardings (no compile): what XLA's `memory_analysis().argument_size_in_bytes` reports."""
    fr = self.round
    sh = fr.sharding
    assert sh is not None, "per-device bytes need a mesh"

    def shard_bytes(x, s) -> int:
      return int(np.prod(s.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize

    state_sh = fr.state_shardings()
    total = sum(shard_bytes(x, state_sh[k]) for k, v in self.state.items()
                for x in jax.tree.leaves(v))
    total += sum(jax.tree.leaves(jax.tree.map(shard_bytes, self.base, fr.base_sharding)))
    total += sum(shard_bytes(x, sh.by_client) for x in self.batches.values())
    # Client ids and sample counts (replicated); the DP noise keys `lower` also passes are unused
    # without DP, so jit prunes them (the abstract rounds here have no DP).
    return total + 2 * 4 * self.clients


@functools.lru_cache(maxsize=4)
def _abstract_model(cfg: models.ModelConfig, rank: int):
  """(graphdef, base, lora) of `cfg` with LoRA of rank `rank` on all projections, as shapes
  (tracing a full 8B model takes tens of seconds: the mesh and client variants share it)."""
  lcfg = models.LoRAConfig(rank=rank, alpha=2.0 * rank)

  def build():
    m = models.CausalLM(cfg, rngs=nnx.Rngs(params=0))
    models.add_lora(m, lcfg, rngs=nnx.Rngs(lora=1))
    return m

  return models.split_lora(nnx.eval_shape(build))


def abstract_round(cfg: models.ModelConfig, rank: int, clients: int, shape: tuple[int, int, int],
                   *, logits_chunk: int,
                   sharding: federated.ClientSharding | None = None) -> AbstractRound:
  """FedAvg round of `clients` clients on batches [C, K, B, S] (`shape` = (K, B, S)), LoRA of
  rank `rank` on all projections, built with `nnx.eval_shape` (nothing is allocated)."""
  graphdef, base, lora = _abstract_model(cfg, rank)
  alg = federated.make_algorithm("fedavg")
  tr = federated.LocalTraining(local_steps=shape[0], logits_chunk=logits_chunk)
  fr = federated.FederatedRound(graphdef, alg, tr, num_clients=clients, sharding=sharding)
  state = jax.eval_shape(lambda l: federated.init_state(alg, l, clients, 0), lora)
  full = (clients,) + tuple(shape)
  batches = {k: jax.ShapeDtypeStruct(full, np.int32 if k != "loss_mask" else np.float32)
             for k in BATCH_KEYS}
  return AbstractRound(fr, state, base, batches, clients)
