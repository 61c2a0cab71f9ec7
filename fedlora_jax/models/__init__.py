"""Flax NNX ports of Qwen3 and Llama-3.x with handwritten LoRA."""

from fedlora_jax.models import quant
from fedlora_jax.models.config import ConfigError, ModelConfig, PRESETS, RopeScaling, preset
from fedlora_jax.models.functional import (base_logical_axes, hidden_states, last_logits, lm_loss,
                                           logits, merge, split_lora)
from fedlora_jax.models.hf_io import (CheckpointError, export_peft_adapter, load_hf_checkpoint,
                                      load_peft_adapter, peft_tensors, save_hf_checkpoint)
from fedlora_jax.models.layer_stack import is_stacked, stack_layers, unstack_layers
from fedlora_jax.models.lora import LoRAConfig, LoRAParam, add_lora, lora_pairs, merge_lora
from fedlora_jax.models.quant import QuantFormat, QuantizedWeight, dequantize_tree
from fedlora_jax.models.transformer import CausalLM

__all__ = [
    "CausalLM", "CheckpointError", "ConfigError", "LoRAConfig", "LoRAParam", "ModelConfig",
    "PRESETS", "QuantFormat", "QuantizedWeight", "RopeScaling", "add_lora", "base_logical_axes", "dequantize_tree", "export_peft_adapter",
    "hidden_states", "is_stacked", "last_logits",
    "lm_loss", "load_hf_checkpoint", "load_peft_adapter", "logits", "lora_pairs", "merge",
    "merge_lora", "peft_tensors", "preset", "quant", "save_hf_checkpoint", "split_lora",
    "stack_layers", "unstack_layers",
]
