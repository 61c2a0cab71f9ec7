"""Model configuration for the llama-like decoder shared by Qwen3 and Llama-3.x.

`ModelConfig` mirrors the fields of a Hugging Face `config.json` that change the computation;
`from_hf_config` / `to_hf_config` convert both ways so a local checkpoint loads by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from fedlora_jax.models import quant

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# "none": no remat; "full": recompute the whole layer; "save_base_matmuls": keep the frozen
# projections' outputs, recompute the rest; "save_named": keep q/k/v after RoPE, the attention
# output and the MLP hidden state (names in `transformer.SAVED_NAMES`).
REMAT_POLICIES = ("none", "full", "save_base_matmuls", "save_named")
_CHOICES = {"attention_impl": ("xla", "cudnn"), "remat_policy": REMAT_POLICIES,
            "fuse_lora": ("on", "off"), "scan_layers": ("on", "off")}


class ConfigError(ValueError):
  """A model config that cannot be used (unknown architecture, bad field)."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 `rope_scaling` (rope_type "llama3")."""

  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a Qwen3 / Llama-3.x decoder plus the dtypes we compute in."""

  model_type: str  # "qwen3" or "llama"
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  max_position_embeddings: int = 4096
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  bos_token_id: int | None = None
  eos_token_id: int | None = None
  param_dtype: str = "bfloat16"  # base weights; LoRA weights are always float32
  dtype: str = "bfloat16"  # activations / matmul inputs
  # Speed options; "auto" picks per `jax.default_backend()` (see `resolved`).
  attention_impl: str = "auto"  # "xla" | "cudnn" (fused, bf16/fp16 on GPUs) | "auto"
  remat_policy: str = "auto"  # gradient checkpointing per layer: one of REMAT_POLICIES | "auto"
  fuse_lora: str = "auto"  # "on": one LoRA-A matmul for q/k/v and one for gate/up | "off" | "auto"
  scan_layers: str = "auto"  # "on": layers stacked [L, ...], one lax.scan | "off" | "auto"
  # Storage of the frozen projections (q/k/v/o, gate/up/down; `models.quant`): "none" | "int8" |
  # "int4" | "nf4", blocks of `quant_block_size` input columns (0: per output channel), scales in
  # `quant_scale_dtype`. LoRA, norms and embeddings are never quantized.
  quantize: str = "none"
  quant_block_size: int = 64
  quant_scale_dtype: str = "float32"

  def __post_init__(self):
    if self.model_type not in ("qwen3", "llama"):
      raise ConfigError(f"model_type must be 'qwen3' or 'llama', got {self.model_type!r}")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ConfigError(
          f"num_attention_heads={self.num_attention_heads} is not a multiple of "
          f"num_key_value_heads={self.num_key_value_heads}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ConfigError(f"{name} must be one of {sorted(_DTYPES)}, got {getattr(self, name)!r}")
    for name, allowed in _CHOICES.items():
      if getattr(self, name) not in allowed + ("auto",):
        raise ConfigError(f"{name} must be one of {allowed + ('auto',)}, "
                          f"got {getattr(self, name)!r}")
    try:
      quant.check_format(self.quantize, self.quant_block_size, self.quant_scale_dtype)
    except ValueError as e:
      raise ConfigError(str(e)) from None

  def resolved(self, backend: str | None = None) -> "ModelConfig":
    """This config with every "auto" replaced by the choice for `backend` (default: JAX's).

    GPU: cuDNN fused attention for bf16/fp16, full remat (memory for many clients), fused
    LoRA-A (fewer small kernels). CPU/TPU: XLA attention, no remat, separate LoRA-A matmuls
    (fusing them measured no gain on CPU: benchmark.py --sections=ablation). The layer scan is on
    for accelerators (compile time independent of depth), off on CPU (the unrolled layers leave
    XLA free to fuse across them, and the CPU models here are shallow).
    """
    backend = backend or jax.default_backend()
    gpu = backend in ("gpu", "cuda", "rocm")
    auto = {
        "attention_impl": "cudnn" if gpu and self.dtype in ("bfloat16", "float16") else "xla",
        "remat_policy": "full" if gpu else "none",
        "fuse_lora": "on" if gpu else "off",
        "scan_layers": "off" if backend == "cpu" else "on",
    }
    return self.replace(**{k: v for k, v in auto.items() if getattr(self, k) == "auto"})

  @property
  def qk_norm(self) -> bool:
    """Qwen3 normalises each head of q and k with an RMSNorm before RoPE."""
    return self.model_type == "qwen3"

  @property
  def quant_format(self) -> quant.QuantFormat | None:
    """How the frozen projections are stored (None: in `param_dtype`, unquantized)."""
    if self.quantize == "none":
      return None
    return quant.QuantFormat(self.quantize, self.quant_block_size, self.quant_scale_dtype)

  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  def replace(self, **kw: Any) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    """Number of base parameters (embedding counted once when tied)."""
    d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
    q = self.num_attention_heads * self.head_dim
    kv = self.num_key_value_heads * self.head_dim
    attn = d * q * 2 + d * kv * 2 + (q + 2 * kv + d if self.attention_bias else 0)
    norms = 2 * d + (2 * self.head_dim if self.qk_norm else 0)
    layer = attn + 3 * d * f + norms
    head = 0 if self.tie_word_embeddings else v * d
    return v * d + self.num_hidden_layers * layer + d + head

  # --- Hugging Face config.json ---------------------------------------------------------------

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any] | str | os.PathLike, **overrides: Any) -> "ModelConfig":
    """Builds a config from a HF `config.json` dict, file or model directory."""
    if not isinstance(hf, dict):
      path = os.fspath(hf)
      if os.path.isdir(path):
        path = os.path.join(path, "config.json")
      if not os.path.exists(path):
        raise ConfigError(f"no config.json at {path}")
      with open(path) as f:
        hf = json.load(f)
    model_type = hf.get("model_type")
    if model_type not in ("qwen3", "llama"):
      raise ConfigError(f"unsupported model_type {model_type!r} (expected 'qwen3' or 'llama')")
    try:
      heads = hf["num_attention_heads"]
      rope_scaling = None
      rs = hf.get("rope_scaling") or (hf.get("rope_parameters") or {})
      rope_type = rs.get("rope_type", rs.get("type"))
      if rope_type == "llama3":
        rope_scaling = RopeScaling(
            factor=float(rs["factor"]),
            low_freq_factor=float(rs["low_freq_factor"]),
            high_freq_factor=float(rs["high_freq_factor"]),
            original_max_position_embeddings=int(rs["original_max_position_embeddings"]))
      elif rope_type not in (None, "default"):
        raise ConfigError(f"unsupported rope_scaling type {rope_type!r}")
      rope_theta = hf.get("rope_theta", rs.get("rope_theta", 10000.0))
      eos = hf.get("eos_token_id")
      kw = dict(
          model_type=model_type,
          vocab_size=hf["vocab_size"],
          hidden_size=hf["hidden_size"],
          intermediate_size=hf["intermediate_size"],
          num_hidden_layers=hf["num_hidden_layers"],
          num_attention_heads=heads,
          num_key_value_heads=hf.get("num_key_value_heads") or heads,
          head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
          rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
          rope_theta=float(rope_theta),
          rope_scaling=rope_scaling,
          max_position_embeddings=hf.get("max_position_embeddings", 4096),
          tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
          attention_bias=bool(hf.get("attention_bias", False)),
          bos_token_id=hf.get("bos_token_id"),
          eos_token_id=eos[0] if isinstance(eos, list) else eos,
      )
    except KeyError as e:
      raise ConfigError(f"config.json lacks the field {e.args[0]!r}") from None
    kw.update(overrides)
    return cls(**kw)

  def to_hf_config(self) -> dict[str, Any]:
    """The HF `config.json` dict for this architecture (loads with transformers' AutoConfig)."""
    arch = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}[self.model_type]
    hf: dict[str, Any] = dict(
        architectures=[arch],
        model_type=self.model_type,
        vocab_size=self.vocab_size,
        hidden_size=self.hidden_size,
        intermediate_size=self.intermediate_size,
        num_hidden_layers=self.num_hidden_layers,
        num_attention_heads=self.num_attention_heads,
        num_key_value_heads=self.num_key_value_heads,
        head_dim=self.head_dim,
        hidden_act="silu",
        rms_norm_eps=self.rms_norm_eps,
        rope_theta=self.rope_theta,
        max_position_embeddings=self.max_position_embeddings,
        tie_word_embeddings=self.tie_word_embeddings,
        attention_bias=self.attention_bias,
        attention_dropout=0.0,
        torch_dtype=self.param_dtype,
    )
    if self.rope_scaling is not None:
      hf["rope_scaling"] = dict(rope_type="llama3", **dataclasses.asdict(self.rope_scaling))
    if self.model_type == "llama":
      hf["mlp_bias"] = False
    if self.bos_token_id is not None:
      hf["bos_token_id"] = self.bos_token_id
    if self.eos_token_id is not None:
      hf["eos_token_id"] = self.eos_token_id
    return hf


# --- presets -------------------------------------------------------------------------------------

PRESETS: dict[str, ModelConfig] = {
    "qwen3-1.7b": ModelConfig(
        model_type="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rope_theta=1_000_000.0, max_position_embeddings=40960, tie_word_embeddings=True,
        bos_token_id=151643, eos_token_id=151645),
    "qwen3-8b": ModelConfig(
        model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
        num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rope_theta=1_000_000.0, max_position_embeddings=40960, tie_word_embeddings=False,
        bos_token_id=151643, eos_token_id=151645),
    "llama-3.1-8b": ModelConfig(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-5, rope_theta=500_000.0, rope_scaling=RopeScaling(),
        max_position_embeddings=131072, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128001),
    # Tiny sizes for tests and the CPU demo.
    "qwen3-tiny": ModelConfig(
        model_type="qwen3", vocab_size=8192, hidden_size=256, intermediate_size=704,
        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, head_dim=32,
        rope_theta=1_000_000.0, max_position_embeddings=512, tie_word_embeddings=True,
        param_dtype="float32", dtype="float32"),
    "llama-tiny": ModelConfig(
        model_type="llama", vocab_size=8192, hidden_size=256, intermediate_size=704,
        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
        rms_norm_eps=1e-5, rope_theta=500_000.0,
        rope_scaling=RopeScaling(original_max_position_embeddings=64),
        max_position_embeddings=512, param_dtype="float32", dtype="float32"),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
  """A named preset ("qwen3-1.7b", "qwen3-8b", "llama-3.1-8b", "qwen3-tiny", "llama-tiny")."""
  if name not in PRESETS:
    raise ConfigError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)
