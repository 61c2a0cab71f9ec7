"""Speed options (attention implementation, remat policies, fused LoRA-A) equal today's path."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fedlora_jax import models
from fedlora_jax.models.attention import attend
from fedlora_jax.models.config import REMAT_POLICIES

CFG = models.preset("qwen3-tiny", vocab_size=211, hidden_size=64, intermediate_size=96,
                    num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=16, attention_impl="xla", remat_policy="none", fuse_lora="off",
                    scan_layers="off")


def _split(cfg, lora_config=models.LoRAConfig(rank=4, alpha=8.0)):
  model = models.CausalLM(cfg, rngs=nnx.Rngs(params=0))
  models.add_lora(model, lora_config, rngs=nnx.Rngs(lora=1))
  graphdef, base, lora = models.split_lora(model)
  # Nonzero B so the LoRA branch (and its gradient with respect to A) is exercised.
  lora = jax.tree.map_with_path(
      lambda path, x: (0.05 * jax.random.normal(jax.random.key(len(path)), x.shape)
                       if path[-1].key == "lora_B" else x), lora)
  return graphdef, base, lora


def _batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, CFG.vocab_size, size=(3, 12)).astype(np.int32)
  mask = np.ones((3, 12), np.int32)
  mask[1, 9:] = 0  # right padding
  loss_mask = mask.astype(np.float32)
  loss_mask[:, 0] = 0
  return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask}


def _loss_and_grads(cfg, lora=None, dropout_rng=None):
  graphdef, base, lora0 = _split(cfg)
  lora = lora0 if lora is None else lora
  fn = lambda l: models.lm_loss(graphdef, base, l, _batch(), dropout_rng=dropout_rng)[0]
  return jax.jit(jax.value_and_grad(fn))(lora)


@functools.cache
def _reference():
  """Loss and LoRA gradients of today's path (XLA attention with a mask, no remat, no fusion)."""
  return _loss_and_grads(CFG)


def _assert_trees_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def test_auto_options_resolve_per_backend_and_bad_values_are_named():
  auto = CFG.replace(attention_impl="auto", remat_policy="auto", fuse_lora="auto")
  cpu = auto.resolved("cpu")
  assert (cpu.attention_impl, cpu.remat_policy, cpu.fuse_lora) == ("xla", "none", "off")
  gpu = auto.replace(dtype="bfloat16").resolved("gpu")
  assert (gpu.attention_impl, gpu.remat_policy, gpu.fuse_lora) == ("cudnn", "full", "on")
  assert auto.resolved("gpu").attention_impl == "xla"  # fp32 activations: no cuDNN kernel
  assert CFG.resolved("gpu") == CFG  # explicit choices are kept
  with pytest.raises(models.ConfigError, match="remat_policy must be one of"):
    CFG.replace(remat_policy="some")
  with pytest.raises(models.ConfigError, match="attention_impl"):
    CFG.replace(attention_impl="flash")


def test_padding_as_key_lengths_equals_the_mask_under_vmap():
  c, b, t, n, k, h = 2, 3, 10, 4, 2, 16
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (c, b, t, n, h))
  kv = [jax.random.normal(kk, (c, b, t, k, h)) for kk in keys[1:]]
  lengths = np.array([[10, 7, 1], [4, 10, 9]])
  mask = (np.arange(t) < lengths[..., None]).astype(np.int32)  # right padding, [C, B, T]
  run = lambda by_lengths: jax.vmap(lambda q, k, v, m: attend(q, k, v, m, "xla",
                                                              by_lengths=by_lengths))(q, *kv, mask)
  np.testing.assert_allclose(np.asarray(run(True)), np.asarray(run(False)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES if p != "none"])
def test_remat_policies_give_the_gradients_of_no_remat(policy):
  loss, grads = _reference()
  loss_p, grads_p = _loss_and_grads(CFG.replace(remat_policy=policy))
  assert float(loss_p) == pytest.approx(float(loss), abs=1e-6)
  _assert_trees_close(grads_p, grads, atol=1e-5)


def test_fused_lora_a_equals_separate_projections():
  graphdef, base, lora = _split(CFG)
  graphdef_f, base_f, lora_f = _split(CFG.replace(fuse_lora="on"))
  _assert_trees_close(lora_f, lora, atol=0)  # same parameter tree: PEFT export unchanged
  ids, mask = _batch()["input_ids"], _batch()["attention_mask"]
  np.testing.assert_allclose(np.asarray(models.logits(graphdef_f, base_f, lora, ids, mask)),
                             np.asarray(models.logits(graphdef, base, lora, ids, mask)),
                             rtol=0, atol=1e-5)
  loss, grads = _reference()
  loss_f, grads_f = _loss_and_grads(CFG.replace(fuse_lora="on"))
  assert float(loss_f) == pytest.approx(float(loss), abs=1e-6)
  _assert_trees_close(grads_f, grads, atol=1e-5)


def test_fused_lora_with_dropout_keeps_each_projections_mask():
  cfg = CFG.replace(fuse_lora="on")
  dropout = models.LoRAConfig(rank=4, alpha=8.0, dropout=0.3)
  results = []
  for c in (CFG, cfg):
    graphdef, base, lora = _split(c, dropout)
    fn = lambda l: models.lm_loss(graphdef, base, l, _batch(),
                                  dropout_rng=jax.random.key(7))[0]
    results.append(jax.jit(jax.value_and_grad(fn))(lora))
  (loss, grads), (loss_f, grads_f) = results
  assert float(loss_f) == float(loss)
  _assert_trees_close(grads_f, grads, atol=0)
