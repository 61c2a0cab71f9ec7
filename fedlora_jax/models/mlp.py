"""SwiGLU feed-forward block: down(silu(gate(x)) * up(x))."""

from __future__ import annotations

import jax
from flax import nnx

from fedlora_jax.models.config import ModelConfig
from fedlora_jax.models.lora import Linear


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    kw = dict(use_bias=False, param_dtype=cfg.jnp_param_dtype, dtype=cfg.jnp_dtype, rngs=rngs)
    self.gate_proj = Linear(d, f, axes=("mlp", "embed"), **kw)
    self.up_proj = Linear(d, f, axes=("mlp", "embed"), **kw)
    self.down_proj = Linear(f, d, axes=("embed", "mlp"), **kw)

  def __call__(self, x_btd: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
    """[B, T, D] -> [B, T, D]."""
    rg, ru, rd = [None] * 3 if dropout_rng is None else jax.random.split(dropout_rng, 3)
    h_btf = jax.nn.silu(self.gate_proj(x_btd, rg)) * self.up_proj(x_btd, ru)
    return self.down_proj(h_btf, rd)
