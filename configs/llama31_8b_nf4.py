"""Llama-3.1-8B as in llama31_8b.py over an NF4-quantized frozen base (see qwen3_8b_nf4.py).

    python scripts/train.py --config=configs/llama31_8b_nf4.py \
        --config.model.hf_path=/models/Llama-3.1-8B --config.data.medqa=/data/medqa/train.jsonl \
        --config.workdir=runs/llama31_8b_nf4
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "llama31_8b")
  c.workdir = "runs/llama31_8b_nf4"
  c.model.quantize = "nf4"
  return c
