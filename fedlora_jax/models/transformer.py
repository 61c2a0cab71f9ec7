"""The llama-like decoder serving Qwen3 and Llama-3.x, with HF module names.

`CausalLM.model.layers[i].self_attn.q_proj.weight` is HF's `model.layers.i.self_attn.q_proj.weight`,
so checkpoint loading and PEFT export are by-name maps. With `ModelConfig.scan_layers` the layers
are one `DecoderLayer` whose variables carry a leading layer axis [L, ...], run by one `lax.scan`
(XLA compiles the layer once, so compile time does not grow with depth); `models.layer_stack`
converts between the two layouts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fedlora_jax.models.attention import Attention
from fedlora_jax.models.config import ModelConfig
from fedlora_jax.models.layer_stack import LAYERS
from fedlora_jax.models.layers import Embed, RMSNorm, rope_cos_sin, rope_inv_freq
from fedlora_jax.models.lora import BASE_MATMUL
from fedlora_jax.models.mlp import MLP
from fedlora_jax.models.partitioning import param


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    pd = cfg.jnp_param_dtype
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
    self.self_attn = Attention(cfg, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x_btd, cos_bth, sin_bth, mask_bt, dropout_rng=None):
    """Pre-norm residual block, [B, T, D] -> [B, T, D]."""
    ra, rm = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    x_btd = x_btd + self.self_attn(self.input_layernorm(x_btd), cos_bth, sin_bth, mask_bt, ra)
    return x_btd + self.mlp(self.post_attention_layernorm(x_btd), rm)


def _layer_forward(layer: DecoderLayer, x, cos, sin, mask, rng):
  return layer(x, cos, sin, mask, rng)


# Activations the "save_named" policy keeps (`checkpoint_name`s in attention.py and mlp.py).
SAVED_NAMES = ("qkv", "attention_out", "mlp_hidden")
_save = jax.checkpoint_policies.save_only_these_names
LAYER_FORWARD = {
    "none": _layer_forward,
    "full": nnx.remat(_layer_forward),
    "save_base_matmuls": nnx.remat(_layer_forward, policy=_save(BASE_MATMUL)),
    "save_named": nnx.remat(_layer_forward, policy=_save(*SAVED_NAMES)),
}


class DecoderModel(nnx.Module):
  """Embedding, decoder layers and final norm (HF's `model`)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=cfg.jnp_param_dtype,
                              dtype=cfg.jnp_dtype, rngs=rngs)
    if cfg.scan_layers == "on":
      self.layers = _stacked_layers(cfg, rngs)
    else:
      self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=cfg.jnp_param_dtype)
    self.cfg = cfg

  def __call__(self, input_ids_bt: jax.Array, attention_mask_bt: jax.Array | None = None,
               positions_bt: jax.Array | None = None,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """Token ids [B, T] -> final hidden states [B, T, D] (activation dtype)."""
    cfg = self.cfg
    b, t = input_ids_bt.shape
    if attention_mask_bt is None:
      attention_mask_bt = jnp.ones((b, t), jnp.int32)
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    cos_bth, sin_bth = rope_cos_sin(positions_bt, inv_freq)
    x_btd = self.embed_tokens(input_ids_bt).astype(cfg.jnp_dtype)
    forward = LAYER_FORWARD[cfg.remat_policy]
    if cfg.scan_layers == "on":
      layer_def, layer_state = nnx.split(self.layers)
      rngs = None if dropout_rng is None else jax.vmap(
          lambda i: jax.random.fold_in(dropout_rng, i))(jnp.arange(cfg.num_hidden_layers))

      def body(x, state_and_rng):
        state, rng = state_and_rng
        return forward(nnx.merge(layer_def, state), x, cos_bth, sin_bth, attention_mask_bt,
                       rng), None

      x_btd, _ = jax.lax.scan(body, x_btd, (layer_state, rngs))
    else:
      for i, layer in enumerate(self.layers):
        rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
        x_btd = forward(layer, x_btd, cos_bth, sin_bth, attention_mask_bt, rng)
    return self.norm(x_btd)


def _stacked_layers(cfg: ModelConfig, rngs: nnx.Rngs) -> DecoderLayer:
  """One `DecoderLayer` holding all L layers: every variable [L, ...], logical axes
  ("layers", ...)."""

  @nnx.split_rngs(splits=cfg.num_hidden_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS})
  def create(layer_rngs: nnx.Rngs) -> DecoderLayer:
    return DecoderLayer(cfg, rngs=layer_rngs)

  return create(rngs)


class CausalLM(nnx.Module):
  """Qwen3ForCausalLM / LlamaForCausalLM: `model` plus an (optionally tied) `lm_head`."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    cfg = cfg.resolved()  # "auto" speed options -> this backend's choice
    self.cfg = cfg
    self.model = DecoderModel(cfg, rngs=rngs)
    if cfg.tie_word_embeddings:
      self.lm_head = nnx.data(None)
    else:
      init = nnx.initializers.normal(0.02)
      self.lm_head = nnx.data(_LMHead(init(rngs.params(), (cfg.vocab_size, cfg.hidden_size),
                                           cfg.jnp_param_dtype)))

  def head_weight(self) -> jax.Array:
    """The output embedding [V, D]."""
    if self.lm_head is None:
      return self.model.embed_tokens.weight[...]
    return self.lm_head.weight[...]

  def logits(self, hidden_btd: jax.Array) -> jax.Array:
    """[..., D] -> float32 logits [..., V]."""
    w = self.head_weight().astype(self.cfg.jnp_dtype)
    return jnp.einsum("...d,vd->...v", hidden_btd.astype(self.cfg.jnp_dtype), w,
                      preferred_element_type=jnp.float32)

  def __call__(self, input_ids_bt, attention_mask_bt=None, positions_bt=None, dropout_rng=None):
    """Token ids [B, T] -> logits [B, T, V] (float32). For training use `functional.lm_loss`."""
    return self.logits(self.model(input_ids_bt, attention_mask_bt, positions_bt, dropout_rng))


class _LMHead(nnx.Module):

  def __init__(self, weight: jax.Array):
    self.weight = param(weight, ("vocab", "embed"))
