"""The reference paper's setting with Llama-3.1-8B (see qwen3_1p7b.py for the data flags).

    python scripts/train.py --config=configs/llama31_8b.py \
        --config.model.hf_path=/models/Llama-3.1-8B --config.data.medqa=/data/medqa/train.jsonl \
        --config.workdir=runs/llama31_8b
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "qwen3_8b")
  c.workdir = "runs/llama31_8b"
  return c
