"""The layer scan (`model.scan_layers`): stacked layers run by one `lax.scan` equal the layer loop.

Same checkpoint, same LoRA params (stacked for the scan): logits, loss and LoRA gradients (fp32,
atol 1e-5), a whole federated round (FedAvg, FedEx-LoRA's base update), HF save/load and PEFT
export with per-layer names.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from fedlora_jax import federated as F
from fedlora_jax import models
from fedlora_jax.run.gates import base_tensors
from fedlora_jax.sites import codec
from tests.fed_fixtures import client_batches

CFG = models.preset("qwen3-tiny", vocab_size=64, hidden_size=32, intermediate_size=48,
                    num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                    head_dim=16, param_dtype="float32", dtype="float32", scan_layers="off")
LORA = models.LoRAConfig(rank=2, alpha=4.0)
F32 = dict(param_dtype="float32", dtype="float32")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("base"))
  models.save_hf_checkpoint(models.CausalLM(CFG, rngs=nnx.Rngs(params=0)), d)
  return d


def _split(checkpoint, scan, lora_config=LORA, **kw):
  model = models.load_hf_checkpoint(checkpoint, scan_layers=scan, **F32, **kw)
  models.add_lora(model, lora_config, rngs=nnx.Rngs(lora=1))
  return models.split_lora(model)


def _lora(checkpoint, lora_config=LORA):
  """Per-layer LoRA params of the loop model with a nonzero B (so A's gradients are nonzero)."""
  _, _, lora = _split(checkpoint, "off", lora_config)
  return jax.tree.map_with_path(
      lambda p, x: (0.1 * jax.random.normal(jax.random.key(len(str(p))), x.shape)
                    if p[-1].key == "lora_B" else x), lora)


def _close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def test_stacked_layout_holds_every_layer_and_unstacks_to_the_loop_layout(checkpoint):
  g_loop, base_loop, lora_loop = _split(checkpoint, "off")
  g_scan, base_scan, lora_scan = _split(checkpoint, "on")
  q = base_scan["model"]["layers"]["self_attn"]["q_proj"]["weight"]
  assert q.shape == (3, 32, 32) and models.is_stacked(base_scan)
  assert not models.is_stacked(base_loop)
  _close(models.unstack_layers(base_scan), base_loop, atol=0)
  # LoRA is stacked too ([L, r, in]); unstacked it has the loop's tree and shapes.
  assert lora_scan["model"]["layers"]["mlp"]["up_proj"]["lora_A"].shape == (3, 2, 32)
  assert jax.tree.structure(models.unstack_layers(lora_scan)) == jax.tree.structure(lora_loop)
  # ... and the same initial adapters (keys drawn layer by layer in both layouts).
  _close(models.unstack_layers(lora_scan), lora_loop, atol=0)
  _close(models.stack_layers(models.unstack_layers(base_scan)), base_scan, atol=0)
  axes = models.base_logical_axes(g_scan)["model"]["layers"]["mlp"]["down_proj"]["weight"]
  assert axes == ("layers", "embed", "mlp")
  assert F.AxisRules().spec(axes) == jax.sharding.PartitionSpec(None, None, "model")


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scan_equals_layer_loop_in_logits_loss_and_grads(checkpoint, remat):
  lora = _lora(checkpoint, models.LoRAConfig(rank=2, alpha=4.0, dropout=0.2))
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 64, (2, 9)).astype(np.int32)
  mask = np.ones((2, 9), np.int32)
  mask[1, 6:] = 0
  batch = {"input_ids": ids, "attention_mask": mask, "loss_mask": mask.astype(np.float32)}
  out = {}
  for scan in ("off", "on"):
    graphdef, base, _ = _split(checkpoint, scan, remat_policy=remat)
    l = models.stack_layers(lora) if scan == "on" else lora
    fn = lambda l: models.lm_loss(graphdef, base, l, batch, dropout_rng=jax.random.key(5))[0]
    loss, grads = jax.jit(jax.value_and_grad(fn))(l)
    out[scan] = (models.logits(graphdef, base, l, ids, mask), loss, models.unstack_layers(grads))
  np.testing.assert_allclose(np.asarray(out["on"][0]), np.asarray(out["off"][0]), atol=1e-5)
  assert float(out["on"][1]) == pytest.approx(float(out["off"][1]), abs=1e-6)
  _close(out["on"][2], out["off"][2], atol=1e-5)


@pytest.mark.parametrize("algorithm", ["fedavg", "fedex_lora"])
def test_federated_round_with_scan_equals_the_loop(checkpoint, algorithm):
  lora = _lora(checkpoint)
  counts = np.array([10.0, 30.0, 60.0])
  results = {}
  for scan in ("off", "on"):
    graphdef, base, _ = _split(checkpoint, scan)
    alg = F.make_algorithm(algorithm, **({"lora_scaling": 2.0} if algorithm == "fedex_lora"
                                         else {}))
    # SGD: Adam's m / sqrt(v) would blow fp32 noise on near-zero gradients up to ~lr.
    training = F.LocalTraining(local_steps=2, optimizer="sgd", learning_rate=0.5)
    fr = F.FederatedRound(graphdef, alg, training, num_clients=3)
    state = F.init_state(alg, models.stack_layers(lora) if scan == "on" else lora, 3, 0)
    for r in range(2):
      state, base, metrics = fr(state, base, client_batches(3, 2, seed=r), np.arange(3), counts)
    results[scan] = (models.unstack_layers(state["global_lora"]), models.unstack_layers(base),
                     metrics["loss"])
  _close(results["on"][0], results["off"][0], atol=1e-5)
  _close(results["on"][2], results["off"][2], atol=1e-5)
  _close(results["on"][1], results["off"][1], atol=1e-6)
  if algorithm == "fedex_lora":  # the residual reached every layer of the stacked base
    _, base0, _ = _split(checkpoint, "on")
    moved = np.abs(np.asarray(results["on"][1]["model"]["layers"][2]["mlp"]["up_proj"]["weight"])
                   - np.asarray(models.unstack_layers(base0)["model"]["layers"][2]["mlp"]
                                ["up_proj"]["weight"]))
    assert moved.max() > 0


def test_hf_save_and_peft_export_of_a_scanned_model_use_per_layer_names(checkpoint, tmp_path):
  model = models.load_hf_checkpoint(checkpoint, scan_layers="on", **F32)
  models.add_lora(model, LORA, rngs=nnx.Rngs(lora=1))
  models.save_hf_checkpoint(model, tmp_path / "saved")
  original, saved = load_file(os.path.join(checkpoint, "model.safetensors")), load_file(
      tmp_path / "saved" / "model.safetensors")
  assert sorted(saved) == sorted(original)
  for name in original:
    np.testing.assert_array_equal(saved[name], original[name])
  graphdef, base, like = models.split_lora(model)
  lora = _lora(checkpoint)
  stacked = models.stack_layers(lora)
  adapted = models.merge(graphdef, base, stacked)
  models.export_peft_adapter(stacked, adapted, LORA, tmp_path / "adapter")
  tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
  assert tensors.keys() == models.peft_tensors(lora).keys()
  _close(models.load_peft_adapter(tmp_path / "adapter", like), stacked, atol=0)
  _close(codec.lora_from_arrays(codec.lora_arrays(stacked), like), stacked, atol=0)
  name = "base_model.model.model.layers.2.mlp.down_proj.lora_B.weight"
  np.testing.assert_array_equal(tensors[name],
                                np.asarray(lora["model"]["layers"][2]["mlp"]["down_proj"]
                                           ["lora_B"]))
  assert len(tensors) == 3 * 7 * 2
  with open(tmp_path / "adapter" / "adapter_config.json") as f:
    assert json.load(f)["target_modules"] == sorted(models.lora.ALL_PROJECTIONS)
  # The ledger's and Flower's base encodings are per layer too, and a change goes back in place.
  named = base_tensors(base)
  assert named["model.layers.1.self_attn.o_proj.weight"].shape == (32, 32)
  changed = {"model.layers.1.self_attn.o_proj.weight":
             named["model.layers.1.self_attn.o_proj.weight"] + 1.0}
  new_base = codec.with_base_changes(base, changed)
  assert models.is_stacked(new_base)
  np.testing.assert_array_equal(
      np.asarray(new_base["model"]["layers"]["self_attn"]["o_proj"]["weight"][1]),
      changed["model.layers.1.self_attn.o_proj.weight"])
  np.testing.assert_array_equal(
      np.asarray(new_base["model"]["layers"]["self_attn"]["o_proj"]["weight"][0]),
      named["model.layers.0.self_attn.o_proj.weight"])


def test_scan_refuses_lora_on_some_layers_only_and_names_bad_checkpoints(checkpoint, tmp_path):
  model = models.load_hf_checkpoint(checkpoint, scan_layers="on", **F32)
  some = models.LoRAConfig(rank=2, target_regex=r"model/layers/[01]/self_attn/q_proj")
  with pytest.raises(ValueError, match=r"adapts model/layers/self_attn/q_proj in every layer "
                                       r"or in none.*picks layers \[0, 1\] of 3"):
    models.add_lora(model, some, rngs=nnx.Rngs(lora=0))
  every = models.LoRAConfig(rank=2, target_regex=r"model/layers/\d+/self_attn/q_proj")
  adapted = models.add_lora(model, every, rngs=nnx.Rngs(lora=0))
  assert adapted == [f"model/layers/{i}/self_attn/q_proj" for i in range(3)]
  tensors = load_file(os.path.join(checkpoint, "model.safetensors"))
  del tensors["model.layers.2.mlp.up_proj.weight"]
  gate = "model.layers.1.mlp.gate_proj.weight"
  tensors[gate] = tensors[gate][:5]
  bad = tmp_path / "bad"
  bad.mkdir()
  save_file(tensors, bad / "model.safetensors")
  with open(os.path.join(checkpoint, "config.json")) as f:
    (bad / "config.json").write_text(f.read())
  with pytest.raises(models.CheckpointError, match=r"missing tensor\(s\) "
                                                   r"\['model.layers.2.mlp.up_proj.weight'\]"):
    models.load_hf_checkpoint(bad, scan_layers="on", **F32)
  tensors["model.layers.2.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, bad / "model.safetensors")
  with pytest.raises(models.CheckpointError, match=r"model.layers.1.mlp.gate_proj.weight has "
                                                   r"shape \(5, 32\), the config expects \(48, 32\)"):
    models.load_hf_checkpoint(bad, scan_layers="on", **F32)


def test_scan_is_on_for_accelerators_and_off_on_cpu():
  auto = CFG.replace(scan_layers="auto")
  assert auto.resolved("cpu").scan_layers == "off"
  assert auto.resolved("gpu").scan_layers == "on"
  assert auto.resolved("tpu").scan_layers == "on"
  with pytest.raises(models.ConfigError, match="scan_layers must be one of"):
    CFG.replace(scan_layers="yes")


def test_resuming_a_loop_checkpoint_with_the_scan_is_a_clear_error(checkpoint, tmp_path):
  from fedlora_jax.run.checkpoint import Checkpointer, CheckpointMismatchError
  lora = _lora(checkpoint)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), every=1, keep=1)
  ckpt.save(1, {"state": {"global_lora": lora}}, {"round": 1})
  restored, meta = ckpt.restore(1, {"state": {"global_lora": lora}})
  _close(restored["state"]["global_lora"], lora, atol=0)
  assert meta == {"round": 1}
  with pytest.raises(CheckpointMismatchError, match=r"ckpt/1 does not match this run's state.*"
                                                    r"model.scan_layers"):
    ckpt.restore(1, {"state": {"global_lora": models.stack_layers(lora)}})
  ckpt.close()
