"""The reference paper's setting with Qwen3-1.7B: a local HF checkpoint and local medical QA files.

    python scripts/train.py --config=configs/qwen3_1p7b.py \
        --config.model.hf_path=/models/Qwen3-1.7B \
        --config.data.medqa=/data/medqa/train.jsonl --config.data.medmcqa=/data/medmcqa/train.json \
        --config.data.pubmedqa=/data/pubmedqa/ori_pqal.json --config.workdir=runs/qwen3_1p7b

One client per dataset (natural, highly non-IID); bf16 weights, gradient checkpointing. Set
--config.data.partition=dirichlet --config.data.num_clients=8 for label-skewed clients instead.
"""

from fedlora_jax.run.configs import sibling_config


def get_config():
  c = sibling_config(__file__, "default")
  c.workdir = "runs/qwen3_1p7b"
  c.model.hf_path = ""  # required: local directory with config.json, *.safetensors, tokenizer.json
  c.model.param_dtype = "bfloat16"
  c.model.dtype = "bfloat16"
  c.model.remat_policy = "full"
  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.data.source = "files"
  c.data.max_len = 512
  c.fed.rounds = 20
  c.fed.local_steps = 10
  c.fed.batch_size = 4
  c.fed.local_lr = 2e-4
  c.eval.batch_size = 32
  c.eval.max_test_per_client = 500
  return c
