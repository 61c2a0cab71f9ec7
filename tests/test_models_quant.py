"""Weight-only quantization of the frozen base (`models.quant`, `model.quantize`).

NF4 against bitsandbytes' own `quantize_4bit` / `dequantize_4bit` (codes byte for byte, absmax
and dequantized values exactly); int8 / int4 against the closed-form round-trip bound; a model
over the quantized base against the same model over the dequantized weights in float (logits,
LoRA gradients, a federated round on one device and on a `clients x model` mesh), which must be
equal: only the storage changes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedlora_jax import federated as F
from fedlora_jax import models
from fedlora_jax.models import quant
from fedlora_jax.run import setup
from fedlora_jax.run.gates import base_digest
from tests.fed_fixtures import TINY, client_batches, tiny_model
from tests.sharded_worker import MESH_CLIENTS, MESH_SHAPE, spawn


def _weights(shape=(96, 256), seed=0, dtype=np.float32):
  w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  w[3, :64] = 0.0  # an all-zero block
  w[5, 7] = 9.0  # an outlier
  return w.astype(dtype)


# --- formats against references ------------------------------------------------------------


def _bnb():
  try:
    import bitsandbytes.functional as bnb  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    pytest.skip(f"bitsandbytes (the NF4 reference, `test` extra) is not importable: {e}")
  return bnb, torch


def test_nf4_codebook_is_bitsandbytes():
  bnb, _ = _bnb()
  np.testing.assert_array_equal(quant.NF4_CODE, bnb.get_4bit_type("nf4", device="cpu").numpy())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("block", [64, 256])  # 256: one block per row, i.e. per channel
def test_nf4_equals_bitsandbytes_quantize_4bit(dtype, block):
  bnb, torch = _bnb()
  w = torch.from_numpy(_weights()).to(getattr(torch, dtype))
  packed, state = bnb.quantize_4bit(w, blocksize=block, quant_type="nf4")
  want_deq = bnb.dequantize_4bit(packed, state).float().numpy()
  q = quant.quantize(jnp.asarray(w.float().numpy()).astype(dtype), "nf4", block % 256)
  assert q.codes.dtype == jnp.uint8 and q.codes.shape == (96, 128)
  np.testing.assert_array_equal(np.asarray(q.codes).reshape(-1), packed.numpy().reshape(-1))
  np.testing.assert_array_equal(np.asarray(q.scale).reshape(-1), state.absmax.numpy())
  got_deq = np.asarray(quant.dequantize(q).astype(jnp.float32))
  np.testing.assert_array_equal(got_deq, want_deq)


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("block", [0, 64])
@pytest.mark.parametrize("scale_dtype", ["float32", "bfloat16"])
def test_int_round_trip_is_within_half_a_scale(kind, block, scale_dtype):
  w = _weights()
  q = quant.quantize(jnp.asarray(w), kind, block, scale_dtype)
  scale = np.asarray(q.scale.astype(jnp.float32))
  assert scale.shape == (96, 256 // (block or 256)) and q.scale.dtype == scale_dtype
  per_element = np.repeat(scale, block or 256, axis=-1)
  err = np.abs(w - np.asarray(quant.dequantize(q)))
  assert np.all(err <= per_element / 2)
  np.testing.assert_array_equal(err[3, :64], 0.0)  # the zero block is exact
  # absmax maps to the largest code: the outlier round-trips to within the scale's rounding.
  rel = 2.0 ** -8 if scale_dtype == "bfloat16" else 1e-6
  assert abs(np.asarray(quant.dequantize(q))[5, 7] - 9.0) <= 9.0 * rel


def test_codes_layout_and_storage_bytes():
  w = _weights()
  i8, i4 = quant.quantize(jnp.asarray(w), "int8", 64), quant.quantize(jnp.asarray(w), "int4", 64)
  assert (i8.codes.dtype, i8.codes.shape, int(jnp.abs(i8.codes).max())) == (jnp.int8, (96, 256), 127)
  nibbles = np.stack([np.asarray(i4.codes) >> 4, np.asarray(i4.codes) & 15], -1).reshape(96, 256)
  assert nibbles.min() >= 1 and nibbles.max() == 15  # code + 8 in [1, 15]
  np.testing.assert_array_equal(np.asarray(quant.dequantize(i4)),
                                (nibbles.astype(np.float32) - 8) * np.repeat(np.asarray(i4.scale), 64, -1))
  # bytes per weight: 1 + 4 / 64 (int8), 0.5 + 4 / 64 (4-bit, f32 scales), 0.5 + 2 / 64 (bf16)
  n = w.size
  assert i8.nbytes == n + 4 * n // 64
  assert i4.nbytes == n // 2 + 4 * n // 64
  assert quant.quantize(jnp.asarray(w), "nf4", 64, "bfloat16").nbytes == n // 2 + 2 * n // 64
  assert i4.shape == (96, 256) and i4.block_size == 64


def test_bad_formats_are_one_line_errors():
  for kw, match in [(dict(quantize="int3"), r"model.quantize must be one of \('none', 'int8', "
                     r"'int4', 'nf4'\), got 'int3'"),
                    (dict(quantize="nf4", quant_block_size=7), "quant_block_size must be 0"),
                    (dict(quantize="int8", quant_scale_dtype="float16"),
                     "quant_scale_dtype must be one of")]:
    with pytest.raises(models.ConfigError, match=match):
      models.preset("qwen3-tiny", **kw)
  with pytest.raises(ValueError, match=r"shape \(8, 96\) cannot be quantized in blocks of 64"):
    quant.quantize(jnp.ones((8, 96)), "nf4", 64)


# --- a model over the quantized base equals it over the dequantized weights ------------------


def _hf_dir(tmp_path, family):
  pytest.importorskip("torch")
  from tests.hf_fixtures import make_hf_model, save_hf_model  # pylint: disable=import-outside-toplevel
  return save_hf_model(make_hf_model(family, tie_word_embeddings=False), str(tmp_path))


def _batch(vocab):
  rng = np.random.default_rng(1)
  ids = rng.integers(0, vocab, (2, 12)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 9:] = 0
  loss = np.zeros(ids.shape, np.float32)
  loss[:, 4:9] = 1.0
  return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss}


@pytest.mark.parametrize("family,kind,remat", [("qwen3", "nf4", "none"),
                                               ("llama", "int8", "save_base_matmuls")])
def test_quantized_hf_model_equals_its_dequantized_float_twin(tmp_path, family, kind, remat):
  path = _hf_dir(tmp_path, family)
  kw = dict(param_dtype="float32", dtype="float32", scan_layers="off", remat_policy=remat)
  model = models.load_hf_checkpoint(path, quantize=kind, quant_block_size=16, **kw)
  float_model = models.load_hf_checkpoint(path, **kw)
  for m in (model, float_model):
    models.add_lora(m, models.LoRAConfig(rank=4), rngs=nnx_rngs())
  graphdef, base, lora = models.split_lora(model)
  _, float_base, _ = models.split_lora(float_model)
  lora = jax.tree.map(lambda x: x + 0.05, lora)  # B != 0: the adapters act
  # Quantized as read = quantizing the float weight; LoRA, norms and embeddings untouched.
  q = base["model"]["layers"][1]["mlp"]["down_proj"]["weight"]
  want = quant.quantize(float_base["model"]["layers"][1]["mlp"]["down_proj"]["weight"], kind, 16)
  np.testing.assert_array_equal(q.codes, want.codes)
  np.testing.assert_array_equal(q.scale, want.scale)
  np.testing.assert_array_equal(base["model"]["embed_tokens"]["weight"],
                                float_base["model"]["embed_tokens"]["weight"])
  deq = models.dequantize_tree(base)
  batch = _batch(model.cfg.vocab_size)
  ids, mask = batch["input_ids"], batch["attention_mask"]
  logits = jax.jit(lambda b: models.logits(graphdef, b, lora, ids, mask))
  got = logits(base)
  np.testing.assert_allclose(got, logits(deq), rtol=0, atol=1e-5)
  # ... and the quantization is real: the float model's logits differ.
  assert float(jnp.abs(logits(float_base) - got).max()) > 1e-5
  grad = jax.jit(lambda b: jax.grad(lambda l: models.lm_loss(graphdef, b, l, batch)[0])(lora))
  for g, h in zip(jax.tree.leaves(grad(base)), jax.tree.leaves(grad(deq))):
    np.testing.assert_allclose(g, h, rtol=0, atol=1e-6)
  with pytest.raises(ValueError, match="cannot fold LoRA into a quantized base weight"):
    models.merge_lora(model)
  with pytest.raises(ValueError, match="a quantized base .* is not written as an HF checkpoint"):
    models.save_hf_checkpoint(model, tmp_path / "out")


def nnx_rngs():
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return nnx.Rngs(lora=3)


def test_layer_scan_over_a_quantized_base_equals_the_layer_loop(tmp_path):
  path = _hf_dir(tmp_path, "qwen3")
  out = {}
  for scan in ("off", "on"):
    model = models.load_hf_checkpoint(path, param_dtype="float32", dtype="float32",
                                      scan_layers=scan, quantize="nf4", quant_block_size=16)
    graphdef, base, lora = models.split_lora(model)
    out[scan] = models.logits(graphdef, base, lora, _batch(97)["input_ids"])
  assert models.is_stacked(base)
  assert base["model"]["layers"]["self_attn"]["q_proj"]["weight"].codes.shape == (2, 96, 32)
  np.testing.assert_allclose(out["on"], out["off"], rtol=0, atol=1e-5)


def test_round_over_a_quantized_base_equals_the_dequantized_float_round():
  cfg = TINY.replace(quantize="int4", quant_block_size=0)  # per channel
  graphdef, base, lora = tiny_model(cfg)
  n, k = 3, 2
  tr = F.LocalTraining(local_steps=k, optimizer="sgd", learning_rate=1e-2)
  alg = F.make_algorithm("fedavg")
  out = []
  for b in (base, models.dequantize_tree(base)):
    fr = F.FederatedRound(graphdef, alg, tr, num_clients=n)
    state, b = fr.place(F.init_state(alg, lora, n, seed=0), b)
    state, _, metrics = fr(state, b, client_batches(n, k), np.arange(n), np.ones(n, np.float32))
    out.append((state["global_lora"], metrics["loss"]))
  for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1])):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), out[0][0], lora))
  assert max(float(x) for x in moved) > 1e-4


@pytest.fixture(scope="module")
def quant_mesh_run(tmp_path_factory):
  return spawn("quant", tmp_path_factory.mktemp("quant"), timeout=300)


@pytest.mark.slow
@pytest.mark.multidevice
def test_quantized_round_on_the_mesh_equals_the_dequantized_float_round(quant_mesh_run):
  results, report = quant_mesh_run
  assert report["mesh"] == {"clients": MESH_SHAPE[0], "model": MESH_SHAPE[1]}
  ref = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("float_single/")}
  assert any(k.startswith("global_lora/") for k in ref) and len(ref) > 10
  for mode in ("quant_single", "quant_sharded", "quant_scan_sharded"):
    for k, v in ref.items():
      np.testing.assert_allclose(results[f"{mode}/{k}"], v, rtol=0, atol=1e-5, err_msg=mode + k)
  # o_proj is row parallel: its codes and its scales are split alike along the input axis.
  for mode, lead in (("quant_sharded", []), ("quant_scan_sharded", [2])):
    o = report[f"{mode}/o_proj"]
    model_axis = "None, 'model')" if not lead else "None, None, 'model')"
    assert o["codes"]["spec"].endswith(model_axis) and o["scale"]["spec"].endswith(model_axis)
    assert o["codes"]["shard_shapes"] == [lead + [64, 32 // MESH_SHAPE[1]]], o
    assert o["scale"]["shard_shapes"] == [lead + [64, 4 // MESH_SHAPE[1]]], o
  # The memory benchmark's argument count (shapes x shardings, no compile) is XLA's exactly.
  for mode in ("quant_sharded", "quant_scan_sharded"):
    assert report[f"{mode}/counted_argument_bytes"] == report[f"{mode}/argument_bytes"]


# --- the run: FedEx-LoRA refused, the ledger binds the quantized base ------------------------


def test_fedex_lora_over_a_quantized_base_is_refused(tmp_path):
  from configs.default import get_config  # pylint: disable=import-outside-toplevel
  cfg = get_config()
  cfg.fed.algorithm = "fedex_lora"
  setup.algorithm(cfg)  # fine over a float base
  cfg.model.quantize = "nf4"
  with pytest.raises(setup.SetupError, match=r"^fed.algorithm='fedex_lora' cannot run over "
                     r"model.quantize='nf4': its residual folds into the frozen base"):
    setup.algorithm(cfg)
  cfg.model.quantize = "fp8"
  with pytest.raises(setup.SetupError, match="model.quantize must be one of"):
    setup.check_quantization(cfg)


def test_base_digest_binds_the_quantized_codes_and_is_checked_on_resume(tmp_path):
  from fedlora_jax import ledger as L  # pylint: disable=import-outside-toplevel
  _, base, _ = tiny_model()
  digests = {kind: base_digest(tiny_model(TINY.replace(quantize=kind, quant_block_size=16))[1])
             for kind in ("nf4", "int4", "int8")}
  digests["none"] = base_digest(base)
  assert len(set(digests.values())) == 4  # same float weights, four different bases
  again = tiny_model(TINY.replace(quantize="nf4", quant_block_size=16))[1]
  assert base_digest(again) == digests["nf4"]
  backend = L.get_backend("py_ecc")
  regs = [L.enroll("h0", tmp_path / "h0", 10, backend)]
  open_ = lambda digest: L.LedgerServer.open_or_create(
      tmp_path / "ledger.jsonl", tmp_path / "server", regs, label="q", backend=backend,
      rules=L.make_rules(algorithm="fedavg", clients_per_round=1, base_digest=digest))
  server = open_(digests["nf4"])
  assert server.ledger.blocks[0]["rules"]["base_digest"] == digests["nf4"]
  assert server.info()["base_digest"] == digests["nf4"]
  open_(digests["nf4"])  # the same base resumes
  with pytest.raises(L.LedgerError, match="the job's rules differ from the genesis block"):
    open_(digests["int4"])
  with pytest.raises(ValueError, match="malformed base digest"):
    L.make_rules(algorithm="fedavg", clients_per_round=1, base_digest="nf4")


def test_benchmark_variant_quantizes_the_same_float_weights():
  from fedlora_jax.benchmarks import jax_round  # pylint: disable=import-outside-toplevel
  setup = jax_round.build(TINY, 2)
  q = jax_round.with_model_config(setup, setup.cfg.replace(quantize="nf4", quant_block_size=16))
  got = q.base["model"]["layers"][0]["mlp"]["up_proj"]["weight"]
  want = quant.quantize(setup.base["model"]["layers"][0]["mlp"]["up_proj"]["weight"], "nf4", 16)
  np.testing.assert_array_equal(got.codes, want.codes)
  np.testing.assert_array_equal(got.scale, want.scale)
  with pytest.raises(ValueError, match="derived from the float one, not re-quantized"):
    jax_round.with_model_config(q, q.cfg.replace(quantize="int8"))
