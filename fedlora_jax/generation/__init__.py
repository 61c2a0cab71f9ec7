"""Text generation with the Flax ports: KV-cached batched decoding, one or many LoRA adapters."""

from fedlora_jax.generation.decode import (Generated, TokenCallback, generate, left_pad,
                                           merge_adapter)
from fedlora_jax.generation.kv_cache import KVCache, cached_forward, empty_cache, per_row_forward
from fedlora_jax.generation.sampling import DecodeConfig, filter_logits, next_token

__all__ = [
    "DecodeConfig", "Generated", "KVCache", "TokenCallback", "cached_forward", "empty_cache",
    "filter_logits", "generate", "left_pad", "merge_adapter", "next_token", "per_row_forward",
]
