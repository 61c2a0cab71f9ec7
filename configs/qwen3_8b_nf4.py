"""Qwen3-8B as in qwen3_8b.py over an NF4-quantized frozen base (QLoRA storage: 4.5 bits a
projection weight, blocks of 64; LoRA, norms and embeddings stay as they are). The bf16
checkpoint is quantized tensor by tensor as it loads.

    python scripts/train.py --config=configs/qwen3_8b_nf4.py \
        --config.model.hf_path=/models/Qwen3-8B --config.data.medqa=/data/medqa/train.jsonl \
        --config.workdir=runs/qwen3_8b_nf4
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "qwen3_8b")
  c.workdir = "runs/qwen3_8b_nf4"
  c.model.quantize = "nf4"
  return c
