"""FedAvg and the FedOpt family (Reddi et al., 2021): server optimizers on the pseudo-gradient."""

from __future__ import annotations

import optax

from fedlora_jax.federated.algorithms.base import Algorithm


def fedavg(server_lr: float = 1.0) -> Algorithm:
  """FedAvg (McMahan et al., 2017): global <- global + server_lr * sum_c w_c (local_c - global)."""
  return Algorithm(name="fedavg", server_optimizer=optax.sgd(server_lr))


def fedavgm(server_lr: float = 1.0, momentum: float = 0.9) -> Algorithm:
  """FedAvg with server momentum (Hsu et al., 2019)."""
  return Algorithm(name="fedavgm", server_optimizer=optax.sgd(server_lr, momentum=momentum))


def fedadam(server_lr: float = 1e-3, b1: float = 0.9, b2: float = 0.99,
            eps: float = 1e-3) -> Algorithm:
  """FedAdam; eps (tau in the paper) is large by default, as the paper recommends."""
  return Algorithm(name="fedadam", server_optimizer=optax.adam(server_lr, b1=b1, b2=b2, eps=eps))


def fedyogi(server_lr: float = 1e-3, b1: float = 0.9, b2: float = 0.99,
            eps: float = 1e-3) -> Algorithm:
  return Algorithm(name="fedyogi", server_optimizer=optax.yogi(server_lr, b1=b1, b2=b2, eps=eps))


def fedadagrad(server_lr: float = 1e-2, eps: float = 1e-3) -> Algorithm:
  return Algorithm(name="fedadagrad",
                   server_optimizer=optax.adagrad(server_lr, initial_accumulator_value=0.0,
                                                  eps=eps))
