"""LoRA structure and invariants, the pure apply function, the loss, and loading errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from fedlora_jax import models

CFG = models.preset("qwen3-tiny", vocab_size=211, hidden_size=64, intermediate_size=96,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=16)
LORA = models.LoRAConfig(rank=4, alpha=8.0)


def _model(lora=LORA, cfg=CFG):
  model = models.CausalLM(cfg, rngs=nnx.Rngs(params=0))
  if lora is not None:
    models.add_lora(model, lora, rngs=nnx.Rngs(lora=1))
  return model


def _randomize_b(lora_tree, seed=2, scale=0.05):
  leaves, treedef = jax.tree.flatten_with_path(lora_tree)
  key = jax.random.key(seed)
  out = []
  for i, (path, x) in enumerate(leaves):
    if path[-1].key == "lora_B":
      x = scale * jax.random.normal(jax.random.fold_in(key, i), x.shape)
    out.append(x)
  return jax.tree.unflatten(treedef, out)


def _batch(b=3, s=12, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, CFG.vocab_size, size=(b, s)).astype(np.int32)
  mask = np.ones((b, s), np.int32)
  mask[1, 9:] = 0
  loss_mask = np.zeros((b, s), np.float32)
  loss_mask[:, 6:8] = 1.0
  return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask),
          "loss_mask": jnp.asarray(loss_mask)}


def test_lora_tree_names_shapes_dtypes():
  model = _model()
  graphdef, base, lora = models.split_lora(model)
  layer = lora["model"]["layers"][0]
  assert sorted(layer["self_attn"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
  assert sorted(layer["mlp"]) == ["down_proj", "gate_proj", "up_proj"]
  assert layer["self_attn"]["q_proj"]["lora_A"].shape == (4, 64)  # [r, in]
  assert layer["self_attn"]["k_proj"]["lora_B"].shape == (2 * 16, 4)  # [out, r]
  assert layer["mlp"]["down_proj"]["lora_A"].shape == (4, 96)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(lora))
  assert models.lora.count_params(lora) == 2 * (4 * (64 + 64) + 2 * 4 * (64 + 32)
                                                + 4 * (64 + 64) + 2 * 4 * (64 + 96)
                                                + 4 * (96 + 64))
  # A is Kaiming-uniform in +-1/sqrt(in); B is zero.
  a = np.asarray(layer["mlp"]["down_proj"]["lora_A"])
  assert np.abs(a).max() <= 1 / np.sqrt(96) and np.abs(a).max() > 0.8 / np.sqrt(96)
  assert not np.any(np.asarray(layer["mlp"]["down_proj"]["lora_B"]))
  assert "lora_A" not in str(jax.tree_util.keystr(jax.tree.leaves_with_path(base)[0][0]))


def test_target_selection_by_regex_and_scaling():
  lora = models.LoRAConfig(rank=4, alpha=8.0, target_regex=r"model/layers/1/self_attn/(q|v)_proj",
                           use_rslora=True)
  model = _model(lora)
  _, _, tree = models.split_lora(model)
  assert list(tree["model"]["layers"]) == [1]
  assert sorted(tree["model"]["layers"][1]["self_attn"]) == ["q_proj", "v_proj"]
  assert model.model.layers[1].self_attn.q_proj.lora_scaling == pytest.approx(8.0 / 2.0)
  assert models.LoRAConfig(rank=4, alpha=8.0).scaling == 2.0
  with pytest.raises(ValueError, match="matches no projection"):
    _model(models.LoRAConfig(target_regex="nothing"))
  with pytest.raises(ValueError, match="unknown LoRA target"):
    models.LoRAConfig(target_modules=("qproj",))


def test_lora_at_init_equals_base_and_merge_equals_unmerged():
  ids = _batch()["input_ids"]
  base_logits = _model(lora=None)(ids)
  model = _model()
  np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(base_logits))
  graphdef, base, lora = models.split_lora(model)
  lora = _randomize_b(lora)
  unmerged = models.logits(graphdef, base, lora, ids)
  assert float(jnp.max(jnp.abs(unmerged - base_logits))) > 1e-3  # B really changes the output
  merged_model = models.merge(graphdef, base, lora)
  models.merge_lora(merged_model)
  assert merged_model.model.layers[0].self_attn.q_proj.lora_A is None
  np.testing.assert_allclose(np.asarray(merged_model(ids)), np.asarray(unmerged), atol=2e-5)


def test_only_lora_is_differentiated():
  graphdef, base, lora = models.split_lora(_model())
  batch = _batch()
  grads = jax.jit(jax.grad(lambda l: models.lm_loss(graphdef, base, l, batch)[0]))(lora)
  assert jax.tree.structure(grads) == jax.tree.structure(lora)
  # With B = 0 the loss does not depend on A: dL/dA == 0 exactly, dL/dB != 0.
  for (path, g) in jax.tree.leaves_with_path(grads):
    if path[-1].key == "lora_A":
      assert not np.any(np.asarray(g)), path
    else:
      assert float(jnp.abs(g).max()) > 0, path
  # Differentiating w.r.t. the base too shows the base grad is nonzero, i.e. the split, not the
  # math, is what keeps the base frozen; the train step only ever takes grads of `lora`.
  base_grads = jax.jit(jax.grad(lambda b: models.lm_loss(graphdef, b, lora, batch)[0]))(base)
  assert float(jnp.abs(base_grads["model"]["norm"]["weight"]).max()) > 0


def test_vmap_over_clients_equals_separate_applies():
  graphdef, base, lora = models.split_lora(_model())
  clients = [_randomize_b(lora, seed=s) for s in range(4)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *clients)
  ids = _batch()["input_ids"]
  batched = jax.jit(jax.vmap(models.logits, in_axes=(None, None, 0, None)), static_argnums=0)(
      graphdef, base, stacked, ids)
  for c in range(4):
    single = models.logits(graphdef, base, clients[c], ids)
    np.testing.assert_allclose(np.asarray(batched[c]), np.asarray(single), atol=1e-5)


def test_lm_loss_equals_hand_computed_and_target_selection():
  graphdef, base, lora = models.split_lora(_model())
  lora = _randomize_b(lora)
  batch = _batch()
  full = models.logits(graphdef, base, lora, batch["input_ids"], batch["attention_mask"])
  logp = jax.nn.log_softmax(full, axis=-1)
  ids, w = np.asarray(batch["input_ids"]), np.asarray(batch["loss_mask"])
  nll = [-float(logp[b, t - 1, ids[b, t]]) for b in range(3) for t in range(12) if w[b, t]]
  expected = sum(nll) / len(nll)
  for kw in ({}, {"max_target_tokens": 2}, {"max_target_tokens": 3, "logits_chunk": 4}):
    loss, aux = models.lm_loss(graphdef, base, lora, batch, **kw)
    assert float(aux["num_tokens"]) == len(nll) == 6
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  last = models.last_logits(graphdef, base, lora, batch["input_ids"], batch["attention_mask"],
                            jnp.array([5, 6, 2]))
  np.testing.assert_allclose(np.asarray(last), np.asarray(full[jnp.arange(3), jnp.array([5, 6, 2])]),
                             atol=1e-5)


def test_remat_and_bf16_paths_agree_with_fp32():
  batch = _batch()
  graphdef, base, lora = models.split_lora(_model())
  lora = _randomize_b(lora)
  ref, _ = models.lm_loss(graphdef, base, lora, batch)
  g_ref = jax.jit(jax.grad(lambda l: models.lm_loss(graphdef, base, l, batch)[0]))(lora)
  gd_r, base_r, _ = models.split_lora(_model(cfg=CFG.replace(remat_policy="full")))
  loss_r, _ = models.lm_loss(gd_r, base_r, lora, batch)
  g_r = jax.jit(jax.grad(lambda l: models.lm_loss(gd_r, base_r, l, batch)[0]))(lora)
  np.testing.assert_allclose(float(loss_r), float(ref), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_r)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  gd16, base16, _ = models.split_lora(_model(cfg=CFG.replace(param_dtype="bfloat16",
                                                            dtype="bfloat16")))
  assert jax.tree.leaves(base16)[0].dtype == jnp.bfloat16
  loss16, _ = models.lm_loss(gd16, base16, lora, batch)
  assert abs(float(loss16) - float(ref)) < 0.05 * float(ref)


def _write_checkpoint(tmp_path, cfg=CFG):
  model = _model(lora=None, cfg=cfg)
  models.save_hf_checkpoint(model, tmp_path)
  return tmp_path / "model.safetensors"


def test_load_roundtrip_and_loading_errors(tmp_path):
  path = _write_checkpoint(tmp_path)
  loaded = models.load_hf_checkpoint(tmp_path, param_dtype="float32", dtype="float32")
  ids = _batch()["input_ids"]
  np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(_model(lora=None)(ids)))
  tensors = load_file(path)

  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, path)
  with pytest.raises(models.CheckpointError, match=r"missing tensor.*model\.layers\.1\.mlp\.up_proj"):
    models.load_hf_checkpoint(tmp_path)

  tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((96, 65), np.float32)
  save_file(tensors, path)
  with pytest.raises(models.CheckpointError, match=r"up_proj\.weight has shape \(96, 65\).*\(96, 64\)"):
    models.load_hf_checkpoint(tmp_path)

  tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((96, 64), np.float32)
  tensors["model.layers.9.mlp.extra.weight"] = np.zeros((2,), np.float32)
  save_file(tensors, path)
  with pytest.raises(models.CheckpointError, match=r"unexpected tensor.*layers\.9\.mlp\.extra"):
    models.load_hf_checkpoint(tmp_path)

  os.remove(path)
  with pytest.raises(models.CheckpointError, match="neither model.safetensors"):
    models.load_hf_checkpoint(tmp_path)
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"model_type": "gpt2"}, f)
  with pytest.raises(models.ConfigError, match="unsupported model_type 'gpt2'"):
    models.load_hf_checkpoint(tmp_path)


def test_presets_parameter_counts():
  # Published sizes: Qwen3-1.7B has 1.72B params (tied embeddings); Qwen3-8B 8.19B;
  # Llama-3.1-8B 8.03B.
  assert round(models.preset("qwen3-1.7b").num_params() / 1e9, 2) == 1.72
  assert round(models.preset("qwen3-8b").num_params() / 1e9, 2) == 8.19
  assert round(models.preset("llama-3.1-8b").num_params() / 1e9, 2) == 8.03
