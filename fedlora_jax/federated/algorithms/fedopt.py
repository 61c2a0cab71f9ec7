"""FedAvg, FedAvgM and the adaptive FedOpt family: server optimizers on the pseudo-gradient.

The server sees the pseudo-gradient g_t = -Delta_t, Delta_t = sum_c w_c (local_c - global), and
applies an optax transformation to it (`Algorithm.server_update`).

FedAdagrad / FedAdam / FedYogi follow Reddi et al., "Adaptive Federated Optimization" (ICLR 2021),
Algorithm 2, exactly:

    m_t = b1 m_{t-1} + (1 - b1) Delta_t                          (m_{-1} = 0)
    v_t = v_{t-1} + Delta_t^2                                    FedAdagrad
    v_t = b2 v_{t-1} + (1 - b2) Delta_t^2                        FedAdam
    v_t = v_{t-1} - (1 - b2) Delta_t^2 sign(v_{t-1} - Delta_t^2)  FedYogi
    x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)                  (v_{-1} = tau^2)

with no bias correction and tau outside the square root. optax's `adam` / `yogi` bias-correct m
and v and start v at 0 (or 1e-6), and `adagrad` puts its eps inside the square root, so none of
them is this update; `scale_by_fedopt` below is.

Flower differs (flwr 1.x `strategy.FedAdam`): it starts m and v at 0, not tau^2, and FedAdam
multiplies eta by the bias-correction factor sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) (t the 1-based
server round; Kingma & Ba's alpha_t), so its early steps are several times larger than the
paper's (round 1, b1 = 0.9, b2 = 0.99: eta 0.74 Delta / (|Delta| + 10 tau) against the paper's
eta 0.1 Delta / (sqrt(tau^2 + 0.01 Delta^2) + tau)). Flower's FedYogi and FedAdagrad follow
Algorithm 2 except for v_{-1} = 0.

FedAvgM follows Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification" (2019): v <- beta v + g_t, x <- x - eta v, which is exactly
`optax.sgd(eta, momentum=beta)` (trace: v = g + beta v; update -eta v).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedlora_jax.federated.algorithms.base import Algorithm

Rule = Literal["adagrad", "adam", "yogi"]


class FedOptState(NamedTuple):
  m: optax.Updates  # first moment of Delta (m_{t-1})
  v: optax.Updates  # second moment (v_{t-1}), starts at tau^2


def scale_by_fedopt(rule: Rule, *, b1: float, b2: float, tau: float
                    ) -> optax.GradientTransformation:
  """g -> m / (sqrt(v) + tau) with Reddi et al.'s Algorithm 2 moments (see module docstring).

  Fed the pseudo-gradient g = -Delta, it returns -m_Delta / (sqrt(v) + tau); chain it with
  `optax.scale_by_learning_rate(eta)` to get x + eta m_Delta / (sqrt(v) + tau). (m is linear in g
  and v depends only on g^2, so the sign flip commutes with the whole rule.)
  """
  if rule not in ("adagrad", "adam", "yogi"):
    raise ValueError(f"unknown FedOpt rule {rule!r} (adagrad, adam, yogi)")
  if tau <= 0:
    raise ValueError(f"FedOpt needs tau > 0 (v starts at tau^2), got {tau}")

  def init(params):
    return FedOptState(m=jax.tree.map(jnp.zeros_like, params),
                       v=jax.tree.map(lambda p: jnp.full_like(p, tau * tau), params))

  def second_moment(v, g):
    g2 = g * g
    if rule == "adagrad":
      return v + g2
    if rule == "adam":
      return b2 * v + (1.0 - b2) * g2
    return v - (1.0 - b2) * g2 * jnp.sign(v - g2)

  def update(updates, state, params=None):
    del params
    m = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.m, updates)
    v = jax.tree.map(second_moment, state.v, updates)
    out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + tau), m, v)
    return out, FedOptState(m=m, v=v)

  return optax.GradientTransformation(init, update)


def fedopt(rule: Rule, server_lr: float, *, b1: float, b2: float, tau: float
           ) -> optax.GradientTransformation:
  """Reddi et al.'s server optimizer: x <- x + server_lr * m / (sqrt(v) + tau)."""
  return optax.chain(scale_by_fedopt(rule, b1=b1, b2=b2, tau=tau),
                     optax.scale_by_learning_rate(server_lr))


def fedavg(server_lr: float = 1.0) -> Algorithm:
  """FedAvg (McMahan et al., 2017): global <- global + server_lr * sum_c w_c (local_c - global)."""
  return Algorithm(name="fedavg", server_optimizer=optax.sgd(server_lr))


def fedavgm(server_lr: float = 1.0, momentum: float = 0.9) -> Algorithm:
  """FedAvgM (Hsu et al., 2019): v <- momentum v - Delta; global <- global - server_lr v."""
  return Algorithm(name="fedavgm", server_optimizer=optax.sgd(server_lr, momentum=momentum))


def fedadam(server_lr: float = 1e-2, b1: float = 0.9, b2: float = 0.99,
            eps: float = 1e-3) -> Algorithm:
  """FedAdam (Reddi et al., 2021, Algorithm 2); eps is the paper's tau."""
  return Algorithm(name="fedadam", server_optimizer=fedopt("adam", server_lr, b1=b1, b2=b2,
                                                           tau=eps))


def fedyogi(server_lr: float = 1e-2, b1: float = 0.9, b2: float = 0.99,
            eps: float = 1e-3) -> Algorithm:
  """FedYogi (Reddi et al., 2021, Algorithm 2); eps is the paper's tau."""
  return Algorithm(name="fedyogi", server_optimizer=fedopt("yogi", server_lr, b1=b1, b2=b2,
                                                           tau=eps))


def fedadagrad(server_lr: float = 1e-2, b1: float = 0.9, eps: float = 1e-3) -> Algorithm:
  """FedAdagrad (Reddi et al., 2021, Algorithm 2, with its momentum b1); eps is the paper's tau."""
  return Algorithm(name="fedadagrad", server_optimizer=fedopt("adagrad", server_lr, b1=b1,
                                                             b2=0.0, tau=eps))
