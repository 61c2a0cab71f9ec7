"""Logits parity with HF transformers (PyTorch, fp32) for tiny random Qwen3 / Llama-3.1 models."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

from fedlora_jax import models  # noqa: E402
from tests.hf_fixtures import make_hf_model, save_hf_model  # noqa: E402

pytestmark = pytest.mark.torch

CASES = {
    "qwen3_tied": ("qwen3", dict(tie_word_embeddings=True)),
    "qwen3_untied_bias": ("qwen3", dict(tie_word_embeddings=False, attention_bias=True)),
    "llama31_rope_scaling_gqa": ("llama", dict(tie_word_embeddings=False)),
    "llama_tied_plain_rope": ("llama", dict(tie_word_embeddings=True, rope_scaling=None,
                                            num_key_value_heads=2)),
}


def _inputs(vocab: int):
  rng = np.random.default_rng(0)
  ids = rng.integers(0, vocab, size=(3, 20)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, 14:] = 0  # right padding
  mask[2, 7:] = 0
  return ids, mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
  family, overrides = CASES[case]
  hf = make_hf_model(family, **overrides)
  save_hf_model(hf, str(tmp_path))
  ids, mask = _inputs(hf.config.vocab_size)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  model = models.load_hf_checkpoint(tmp_path, param_dtype="float32", dtype="float32")
  assert model.cfg.tie_word_embeddings == overrides["tie_word_embeddings"]
  out = np.asarray(model(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)))
  valid = mask.astype(bool)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out[valid], ref[valid], atol=1e-4, rtol=0)


def test_sharded_checkpoint_and_hf_config_roundtrip(tmp_path):
  hf = make_hf_model("llama", tie_word_embeddings=False)
  save_hf_model(hf, str(tmp_path), max_shard_size="40KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  model = models.load_hf_checkpoint(tmp_path, param_dtype="float32", dtype="float32")
  ids, mask = _inputs(hf.config.vocab_size)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids, jnp.int32))), ref, atol=1e-4,
                             rtol=0)
  # to_hf_config -> transformers config -> from_hf_config is the identity on the architecture.
  import transformers
  cfg = models.ModelConfig.from_hf_config(tmp_path, param_dtype="float32", dtype="float32")
  hf_cfg = transformers.LlamaConfig(**cfg.to_hf_config())
  again = models.ModelConfig.from_hf_config(hf_cfg.to_dict(), param_dtype="float32",
                                            dtype="float32")
  assert again == cfg
  assert again.rope_scaling == models.RopeScaling(8.0, 1.0, 4.0, 16)


def test_save_then_load_is_identity(tmp_path):
  hf = make_hf_model("qwen3", tie_word_embeddings=False)
  save_hf_model(hf, str(tmp_path / "a"))
  model = models.load_hf_checkpoint(tmp_path / "a", param_dtype="float32", dtype="float32")
  models.save_hf_checkpoint(model, tmp_path / "b")
  reloaded = transformers_load(tmp_path / "b")
  ids, _ = _inputs(hf.config.vocab_size)
  with torch.no_grad():
    a = hf(input_ids=torch.tensor(ids)).logits.numpy()
    b = reloaded(input_ids=torch.tensor(ids)).logits.numpy()
  np.testing.assert_array_equal(a, b)


def transformers_load(path):
  import transformers
  return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
