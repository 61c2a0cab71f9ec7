"""The reference paper's setting with Qwen3-8B (see qwen3_1p7b.py for the data flags).

    python scripts/train.py --config=configs/qwen3_8b.py --config.model.hf_path=/models/Qwen3-8B \
        --config.data.medqa=/data/medqa/train.jsonl --config.workdir=runs/qwen3_8b
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "qwen3_1p7b")
  c.workdir = "runs/qwen3_8b"
  c.fed.batch_size = 2
  c.eval.batch_size = 16
  return c
