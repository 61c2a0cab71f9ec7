"""Federated algorithms: each variant is one small file filling in `Algorithm`'s hooks."""

from __future__ import annotations

from typing import Any

from fedlora_jax.federated.algorithms.base import Algorithm, ServerInputs
from fedlora_jax.federated.algorithms.fedex_lora import FedExLoRA
from fedlora_jax.federated.algorithms.fedopt import fedadagrad, fedadam, fedavg, fedavgm, fedyogi
from fedlora_jax.federated.algorithms.fedprox import FedProx
from fedlora_jax.federated.algorithms.fedsa_lora import FedSALoRA
from fedlora_jax.federated.algorithms.ffa_lora import ffa_lora
from fedlora_jax.federated.algorithms.local_only import LocalOnly
from fedlora_jax.federated.algorithms.scaffold import Scaffold

ALGORITHMS = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold",
              "ffa_lora", "fedsa_lora", "fedex_lora", "local")


def make_algorithm(name: str, *, server_lr: float = 1.0, server_momentum: float = 0.9,
                   server_b1: float = 0.9, server_b2: float = 0.99, server_eps: float = 1e-3,
                   fedprox_mu: float = 0.01, local_lr: float = 1e-3,
                   lora_scaling: float = 1.0) -> Algorithm:
  """Builds an algorithm by name with the hyper-parameters it uses (others are ignored; no
  algorithm uses `local_lr` any more, it is accepted so that callers can pass every field)."""
  adam_kw: dict[str, Any] = dict(server_lr=server_lr, b1=server_b1, b2=server_b2, eps=server_eps)
  factories = {
      "fedavg": lambda: fedavg(server_lr),
      "fedprox": lambda: FedProx(mu=fedprox_mu, server_optimizer=fedavg(server_lr).server_optimizer),
      "fedavgm": lambda: fedavgm(server_lr, server_momentum),
      "fedadam": lambda: fedadam(**adam_kw),
      "fedyogi": lambda: fedyogi(**adam_kw),
      "fedadagrad": lambda: fedadagrad(server_lr, server_b1, server_eps),
      "scaffold": lambda: Scaffold(server_optimizer=fedavg(server_lr).server_optimizer),
      "ffa_lora": ffa_lora,
      "fedsa_lora": FedSALoRA,
      "fedex_lora": lambda: FedExLoRA(lora_scaling=lora_scaling),
      "local": LocalOnly,
  }
  if name not in factories:
    raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
  return factories[name]()


__all__ = ["ALGORITHMS", "Algorithm", "FedExLoRA", "FedProx", "FedSALoRA", "LocalOnly",
           "Scaffold", "ServerInputs", "fedadagrad", "fedadam", "fedavg", "fedavgm", "fedyogi",
           "ffa_lora", "make_algorithm"]
