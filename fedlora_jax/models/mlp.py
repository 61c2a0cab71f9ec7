"""SwiGLU feed-forward block: down(silu(gate(x)) * up(x))."""

from __future__ import annotations

import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from fedlora_jax.models.config import ModelConfig
from fedlora_jax.models.lora import Linear, projections


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    kw = dict(use_bias=False, param_dtype=cfg.jnp_param_dtype, dtype=cfg.jnp_dtype, rngs=rngs,
              quant=cfg.quant_format)
    self.gate_proj = Linear(d, f, axes=("mlp", "embed"), **kw)
    self.up_proj = Linear(d, f, axes=("mlp", "embed"), **kw)
    self.down_proj = Linear(f, d, axes=("embed", "mlp"), **kw)
    self.fuse_lora = cfg.fuse_lora == "on"

  def __call__(self, x_btd: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
    """[B, T, D] -> [B, T, D]."""
    rg, ru, rd = [None] * 3 if dropout_rng is None else jax.random.split(dropout_rng, 3)
    gate_btf, up_btf = projections([self.gate_proj, self.up_proj], x_btd, [rg, ru],
                                   fuse=self.fuse_lora)
    h_btf = checkpoint_name(jax.nn.silu(gate_btf) * up_btf, "mlp_hidden")
    return self.down_proj(h_btf, rd)
