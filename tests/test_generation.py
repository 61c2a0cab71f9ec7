"""KV-cached decoding against HF transformers' `generate` (greedy tokens and logits, with and
without a PEFT adapter), against recomputing the whole sequence at every step, and its batching
invariants: left padding, many adapters in one call, merged vs unmerged LoRA."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from fedlora_jax import models  # noqa: E402
from fedlora_jax.generation import (DecodeConfig, filter_logits, generate, left_pad,  # noqa: E402
                                    merge_adapter)
from tests.hf_fixtures import make_hf_model, save_hf_model  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
  """transformers' step-by-step generate on one thread: on the shared 2-core machine, two torch
  threads contending with other processes ran several times slower."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)

NEW = 10
LORA = models.LoRAConfig(rank=4, alpha=8.0)


def _prompts(vocab: int, lengths=(5, 9, 3)) -> list[list[int]]:
  rng = np.random.default_rng(1)
  return [[int(t) for t in rng.integers(1, vocab, n)] for n in lengths]


def _random_lora(lora: dict, seed: int, scale: float = 0.3) -> dict:
  """A trained-looking adapter: B no longer zero (A keeps its random init)."""
  leaves, treedef = jax.tree.flatten(lora)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def _load(family: str, tmp_path, *, scan: str, adapter: bool):
  """(HF model, our graphdef, base, lora); with `adapter`, the HF side is a PeftModel loaded from
  our exported adapter."""
  hf = make_hf_model(family, tie_word_embeddings=family == "qwen3")
  save_hf_model(hf, str(tmp_path / "base"))
  model = models.load_hf_checkpoint(tmp_path / "base", param_dtype="float32", dtype="float32",
                                    scan_layers=scan)
  models.add_lora(model, LORA, rngs=nnx.Rngs(lora=0))
  graphdef, base, lora = models.split_lora(model)
  if not adapter:
    return hf, graphdef, base, lora
  lora = _random_lora(lora, seed=1)
  peft = pytest.importorskip("peft")
  models.export_peft_adapter(lora, models.merge(graphdef, base, lora), LORA, tmp_path / "adapter")
  return peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval(), graphdef, base, lora


def _hf_greedy(hf, prompt: list[int], new: int, stop: int | None = None):
  """HF's greedy continuation of one prompt alone: (tokens [n], logits [n, V])."""
  with torch.no_grad():
    out = hf.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                      max_new_tokens=new, do_sample=False, eos_token_id=stop, pad_token_id=0,
                      output_logits=True, return_dict_in_generate=True)
  return out.sequences[0, len(prompt):].numpy(), torch.stack(out.logits, 1)[0].numpy()


CASES = {  # family, layer scan, PEFT adapter
    "qwen3": ("qwen3", "off", False),
    "qwen3_scan_peft": ("qwen3", "on", True),
    "llama_scan": ("llama", "on", False),
    "llama_peft": ("llama", "off", True),
}
SLOW = pytest.mark.slow  # variants of a default case (.ci/run's slow pass runs them)


@pytest.mark.parametrize("case", ["qwen3_scan_peft", "llama_peft",
                                  pytest.param("qwen3", marks=SLOW),
                                  pytest.param("llama_scan", marks=SLOW)])
def test_greedy_left_padded_batch_matches_transformers_generate_alone(case, tmp_path):
  family, scan, adapter = CASES[case]
  hf, graphdef, base, lora = _load(family, tmp_path, scan=scan, adapter=adapter)
  prompts = _prompts(hf.config.vocab_size)
  ids, mask = left_pad(prompts, pad_id=0)
  out = generate(graphdef, base, lora, ids, mask, DecodeConfig(max_new_tokens=NEW),
                 keep_logits=True)
  for i, prompt in enumerate(prompts):
    tokens, logits = _hf_greedy(hf, prompt, NEW)
    np.testing.assert_array_equal(np.asarray(out.tokens[i]), tokens)
    np.testing.assert_allclose(np.asarray(out.logits[i]), logits, atol=2e-5, rtol=0)
  np.testing.assert_array_equal(np.asarray(out.lengths), [NEW] * len(prompts))


def test_stop_token_ends_a_row_like_transformers(tmp_path):
  hf, graphdef, base, lora = _load("llama", tmp_path, scan="off", adapter=False)
  prompts = _prompts(hf.config.vocab_size)
  free, _ = _hf_greedy(hf, prompts[0], NEW)
  stop = int(free[3])  # the 4th token row 0 generates
  ids, mask = left_pad(prompts, pad_id=0)
  out = generate(graphdef, base, lora, ids, mask,
                 DecodeConfig(max_new_tokens=NEW, stop_ids=(stop,), pad_id=0))
  for i, prompt in enumerate(prompts):
    tokens, _ = _hf_greedy(hf, prompt, NEW, stop=stop)
    n = len(tokens)
    np.testing.assert_array_equal(np.asarray(out.tokens[i, :n]), tokens)
    assert np.all(np.asarray(out.tokens[i, n:]) == 0)
    first = np.flatnonzero(tokens == stop)
    assert int(out.lengths[i]) == (first[0] + 1 if len(first) else NEW)
  assert int(out.lengths[0]) == list(free).index(stop) + 1


@pytest.mark.parametrize("scan", ["on", pytest.param("off", marks=SLOW)])
def test_cache_equals_recomputing_the_whole_sequence_each_step(scan, tmp_path):
  _, graphdef, base, lora = _load("qwen3", tmp_path, scan=scan, adapter=False)
  lora = _random_lora(lora, seed=2)
  prompts = _prompts(97)
  ids, mask = left_pad(prompts, pad_id=0)
  out = generate(graphdef, base, lora, ids, mask, DecodeConfig(max_new_tokens=NEW),
                 keep_logits=True)
  # The training forward over the whole sequence so far, every step. The not-yet-generated
  # columns are masked right padding (one shape, one compilation): causal attention keeps them
  # out of every earlier column's logits.
  full = jax.jit(lambda ids, mask, pos: models.merge(graphdef, base, lora)(ids, mask, pos))
  p = ids.shape[1]
  seq = np.concatenate([ids, np.zeros((len(ids), NEW), np.int32)], axis=1)
  seq_mask = np.concatenate([mask, np.zeros((len(ids), NEW), np.int32)], axis=1)
  for step in range(NEW):
    positions = np.maximum(np.cumsum(seq_mask, axis=1) - 1, 0)
    logits = np.asarray(full(seq, seq_mask, positions))[:, p + step - 1]
    np.testing.assert_allclose(np.asarray(out.logits[:, step]), logits, atol=1e-5)
    token = np.argmax(logits, axis=-1)
    np.testing.assert_array_equal(np.asarray(out.tokens[:, step]), token)
    seq[:, p + step], seq_mask[:, p + step] = token, 1


def test_left_padded_batch_equals_each_prompt_alone(tmp_path):
  _, graphdef, base, lora = _load("llama", tmp_path, scan="on", adapter=False)
  lora = _random_lora(lora, seed=3)
  prompts = _prompts(101, lengths=(2, 11, 6, 1))
  ids, mask = left_pad(prompts, pad_id=0, multiple=8)  # 16 columns: every row padded
  config = DecodeConfig(max_new_tokens=NEW)
  batch = generate(graphdef, base, lora, ids, mask, config, keep_logits=True)
  for i, prompt in enumerate(prompts):
    alone = generate(graphdef, base, lora, *left_pad([prompt], 0, multiple=8), config,
                     keep_logits=True)
    np.testing.assert_array_equal(np.asarray(batch.tokens[i]), np.asarray(alone.tokens[0]))
    np.testing.assert_allclose(np.asarray(batch.logits[i]), np.asarray(alone.logits[0]),
                               atol=1e-5)


@pytest.mark.parametrize("scan", ["off", pytest.param("on", marks=SLOW)])
def test_many_adapters_in_one_call_equal_one_adapter_at_a_time(scan, tmp_path):
  _, graphdef, base, lora = _load("qwen3", tmp_path, scan=scan, adapter=False)
  adapters = [_random_lora(lora, seed=s) for s in (4, 5, 6)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *adapters)  # [A, ...]
  prompts = _prompts(97, lengths=(5, 9, 3, 7))
  rows = [2, 0, 1, 2]
  ids, mask = left_pad(prompts, pad_id=0)
  config = DecodeConfig(max_new_tokens=NEW)
  many = generate(graphdef, base, stacked, ids, mask, config, adapter_ids=rows, keep_logits=True)
  ones = [generate(graphdef, base, adapter, ids, mask, config, keep_logits=True)
          for adapter in adapters]
  for i, a in enumerate(rows):
    np.testing.assert_array_equal(np.asarray(many.tokens[i]), np.asarray(ones[a].tokens[i]))
    np.testing.assert_allclose(np.asarray(many.logits[i]), np.asarray(ones[a].logits[i]),
                               atol=1e-5)
  # The adapters really differ: not every row decodes what adapter 0 would.
  assert not np.array_equal(np.asarray(many.tokens), np.asarray(ones[0].tokens))


def test_merged_adapter_decodes_like_the_unmerged_one(tmp_path):
  _, graphdef, base, lora = _load("llama", tmp_path, scan="on", adapter=False)
  lora = _random_lora(lora, seed=7)
  ids, mask = left_pad(_prompts(101), pad_id=0)
  config = DecodeConfig(max_new_tokens=NEW)
  unmerged = generate(graphdef, base, lora, ids, mask, config, keep_logits=True)
  merged_def, merged_base, empty = merge_adapter(graphdef, base, lora)
  assert empty == {}
  merged = generate(merged_def, merged_base, empty, ids, mask, config, keep_logits=True)
  np.testing.assert_array_equal(np.asarray(merged.tokens), np.asarray(unmerged.tokens))
  # Folding B A into W changes the float32 rounding: measured up to 1.1e-5 on these models.
  np.testing.assert_allclose(np.asarray(merged.logits), np.asarray(unmerged.logits), atol=5e-5)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 5, 1.0),
                                                     (1.3, 0, 0.8), (0.9, 20, 0.5)])
def test_filters_match_transformers_logits_warpers(temperature, top_k, top_p):
  from transformers.generation import logits_process as lp
  logits = np.random.default_rng(0).normal(size=(4, 97)).astype(np.float32) * 3
  warpers = [lp.TemperatureLogitsWarper(temperature)]
  warpers += [lp.TopKLogitsWarper(top_k)] if top_k else []
  warpers += [lp.TopPLogitsWarper(top_p)] if top_p < 1.0 else []
  ref = torch.tensor(logits)
  for w in warpers:
    ref = w(None, ref)
  ours = np.asarray(filter_logits(jnp.asarray(logits),
                                  DecodeConfig(temperature=temperature, top_k=top_k, top_p=top_p)))
  ref = ref.numpy()
  np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
  np.testing.assert_allclose(ours[~np.isinf(ours)], ref[~np.isinf(ref)], rtol=1e-6)


def test_sampling_keeps_to_the_filtered_tokens_and_is_reproducible(tmp_path):
  _, graphdef, base, lora = _load("qwen3", tmp_path, scan="off", adapter=False)
  ids, mask = left_pad(_prompts(97), pad_id=0)
  greedy = generate(graphdef, base, lora, ids, mask, DecodeConfig(max_new_tokens=NEW))
  top1 = generate(graphdef, base, lora, ids, mask,
                  DecodeConfig(max_new_tokens=NEW, temperature=2.0, top_k=1),
                  rng=jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(top1.tokens), np.asarray(greedy.tokens))
  config = DecodeConfig(max_new_tokens=NEW, temperature=1.5, top_k=3)
  a = generate(graphdef, base, lora, ids, mask, config, rng=jax.random.key(0), keep_logits=True)
  b = generate(graphdef, base, lora, ids, mask, config, rng=jax.random.key(0), keep_logits=True)
  c = generate(graphdef, base, lora, ids, mask, config, rng=jax.random.key(1), keep_logits=True)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
  top3 = np.argsort(-np.asarray(a.logits), axis=-1)[..., :3]  # each step's allowed tokens
  assert np.all(np.any(top3 == np.asarray(a.tokens)[..., None], axis=-1))


def test_streamed_tokens_are_the_returned_ones(tmp_path):
  _, graphdef, base, lora = _load("llama", tmp_path, scan="off", adapter=False)
  ids, mask = left_pad(_prompts(101)[:2], pad_id=0)
  seen = []
  out = generate(graphdef, base, lora, ids, mask, DecodeConfig(max_new_tokens=NEW),
                 on_tokens=lambda tokens, done: seen.append(np.asarray(tokens)))
  np.testing.assert_array_equal(np.stack(seen, axis=1), np.asarray(out.tokens))


def test_bad_settings_are_refused():
  for kw, field in ((dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1.0),
                    "temperature"), (dict(top_k=-2), "top_k"), (dict(top_p=0.0), "top_p")):
    with pytest.raises(ValueError, match=field):
      DecodeConfig(**kw)
  with pytest.raises(ValueError, match="rng"):
    generate(None, {}, {}, np.ones((1, 2)), np.ones((1, 2)), DecodeConfig(temperature=1.0))
  with pytest.raises(ValueError, match="at least one token"):
    left_pad([[1], []], pad_id=0)
  with pytest.raises(ValueError, match="left padded"):
    generate(None, {}, {}, np.ones((2, 3)), np.array([[1, 1, 1], [1, 1, 0]]), DecodeConfig())
