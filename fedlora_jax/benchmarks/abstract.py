"""A federated round over abstract shapes only (no weights): for memory and compile-time figures."""

from __future__ import annotations

import dataclasses
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


def abstract_round(cfg: models.ModelConfig, rank: int, clients: int, shape: tuple[int, int, int],
                   *, logits_chunk: int,
                   sharding: federated.ClientSharding | None = None) -> AbstractRound:
  """FedAvg round of `clients` clients on batches [C, K, B, S] (`shape` = (K, B, S)), LoRA of
  rank `rank` on all projections, built with `nnx.eval_shape` (nothing is allocated)."""
  lcfg = models.LoRAConfig(rank=rank, alpha=2.0 * rank)

  def build():
    m = models.CausalLM(cfg, rngs=nnx.Rngs(params=0))
    models.add_lora(m, lcfg, rngs=nnx.Rngs(lora=1))
    return m

  graphdef, base, lora = models.split_lora(nnx.eval_shape(build))
  alg = federated.make_algorithm("fedavg")
  tr = federated.LocalTraining(local_steps=shape[0], logits_chunk=logits_chunk)
  fr = federated.FederatedRound(graphdef, alg, tr, num_clients=clients, sharding=sharding)
  state = jax.eval_shape(lambda l: federated.init_state(alg, l, clients, 0), lora)
  full = (clients,) + tuple(shape)
  batches = {k: jax.ShapeDtypeStruct(full, np.int32 if k != "loss_mask" else np.float32)
             for k in BATCH_KEYS}
  return AbstractRound(fr, state, base, batches, clients)
