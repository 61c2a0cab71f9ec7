"""Builds what a run needs from its config: tokenizer, base model with LoRA, clients' data."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import ml_collections
import numpy as np
from flax import nnx
from tokenizers import Tokenizer

from fedlora_jax import data as D
from fedlora_jax import federated as F
from fedlora_jax import models
from fedlora_jax.pretrain import pretrain_base


class SetupError(ValueError):
  """A config that cannot be set up (bad path, inconsistent fields)."""


@dataclasses.dataclass
class ClientData:
  """Training clients and evaluation test sets (the same hospitals, except when centralized).

  Attributes:
    train_names / train: who trains, with their tokenized training sets.
    test_names / test: every hospital's test set.
    summary: one dict per hospital (sizes, dominant label and share).
  """

  train_names: list[str]
  train: list[D.TokenizedMCQ]
  test_names: list[str]
  test: list[D.TokenizedMCQ]
  summary: list[dict[str, Any]]


def expand(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path)) if path else path


def lora_config(cfg: ml_collections.ConfigDict) -> models.LoRAConfig:
  return models.LoRAConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                           target_modules=tuple(cfg.lora.target_modules),
                           target_regex=cfg.lora.target_regex or None,
                           use_rslora=cfg.lora.use_rslora, dropout=cfg.lora.dropout)


def algorithm(cfg: ml_collections.ConfigDict) -> F.Algorithm:
  """The federated algorithm `fed.algorithm` with its hyper-parameters from the config."""
  f = cfg.fed
  return F.make_algorithm(f.algorithm, server_lr=f.server_lr, server_momentum=f.server_momentum,
                          server_b1=f.server_b1, server_b2=f.server_b2, server_eps=f.server_eps,
                          fedprox_mu=f.fedprox_mu, local_lr=f.local_lr,
                          lora_scaling=lora_config(cfg).scaling)


def _icd_benchmark(cfg) -> D.ICD10Benchmark:
  return D.build_icd10_benchmark(level=cfg.data.level, seed=cfg.seed,
                                 cache_dir=expand(cfg.cache_dir))


def _benchmark_codes(bench: D.ICD10Benchmark) -> set[str]:
  return {r.id for name in bench.client_names for split in ("train", "val", "test")
          for r in bench.clients[name].split(split)}


def base_model_dir(cfg) -> str:
  """The local HF directory of the base: `model.hf_path`, or the cached tiny pretrained base."""
  if cfg.model.hf_path:
    path = expand(cfg.model.hf_path)
    if not os.path.isdir(path):
      raise SetupError(f"model.hf_path {path} is not a directory")
    return path
  if cfg.data.source != "icd10":
    raise SetupError("the tiny pretrained base only exists for data.source='icd10'; "
                     "set model.hf_path to a local HF checkpoint")
  cache = expand(cfg.cache_dir)
  tokenizer = D.train_icd_tokenizer(cfg.data.tokenizer_vocab, cache_dir=cache)
  vocab = -(-tokenizer.get_vocab_size() // 64) * 64
  arch = models.preset(cfg.model.preset, vocab_size=vocab, hidden_size=cfg.model.hidden_size,
                       intermediate_size=cfg.model.intermediate_size,
                       num_hidden_layers=cfg.model.num_hidden_layers,
                       num_attention_heads=cfg.model.num_attention_heads,
                       num_key_value_heads=cfg.model.num_key_value_heads,
                       head_dim=cfg.model.head_dim, max_position_embeddings=512,
                       param_dtype="float32", dtype="float32", eos_token_id=1)
  # Public text only: the ICD-10-CM tabular list and lettered questions about codes that no
  # hospital holds (a real LLM has read both kinds). Every benchmark code is left out with its
  # 7th-character variants, so no train, val or test description is seen before federated
  # training.
  held = _benchmark_codes(_icd_benchmark(cfg))
  rng = np.random.default_rng([cfg.seed, 13])
  tabular = D.icd10_tabular_text(exclude_codes=held)
  tabular = [tabular[i] for i in rng.permutation(len(tabular))[:cfg.pretrain.tabular_lines]]
  questions = D.public_questions(held, cfg.pretrain.public_questions, level=cfg.data.level,
                                 seed=cfg.seed)
  texts = tabular + D.icd10_titles() + [D.format_prompt(q) + D.answer_text(q.answer)
                                        for q in questions]
  return pretrain_base(arch, tokenizer, texts, steps=cfg.pretrain.steps,
                       batch_size=cfg.pretrain.batch_size, seq_len=cfg.pretrain.seq_len,
                       learning_rate=cfg.pretrain.learning_rate, seed=cfg.seed,
                       cache_dir=os.path.join(cache, "bases"))


def load_model(cfg) -> tuple[models.CausalLM, Tokenizer, str]:
  """(model with LoRA attached, tokenizer, base directory)."""
  base_dir = base_model_dir(cfg)
  model = models.load_hf_checkpoint(base_dir, param_dtype=cfg.model.param_dtype,
                                    dtype=cfg.model.dtype, remat=cfg.model.remat)
  models.add_lora(model, lora_config(cfg), rngs=nnx.Rngs(lora=cfg.seed))
  return model, D.load_hf_tokenizer(base_dir), base_dir


def _file_records(cfg) -> list[list[D.MCQRecord]]:
  loaders = (("medqa", D.load_medqa), ("medmcqa", D.load_medmcqa), ("pubmedqa", D.load_pubmedqa))
  sources = [(name, fn, expand(cfg.data[name])) for name, fn in loaders if cfg.data[name]]
  if not sources:
    raise SetupError("data.source='files' needs at least one of data.medqa, data.medmcqa, "
                     "data.pubmedqa")
  return [fn(path) for _, fn, path in sources]


def _partition_files(cfg) -> tuple[list[str], list[list[D.MCQRecord]]]:
  per_source = _file_records(cfg)
  if cfg.data.partition == "natural":
    return [recs[0].source for recs in per_source], per_source
  records = [r for recs in per_source for r in recs]
  n, k = len(records), cfg.data.num_clients
  if cfg.data.partition == "iid":
    parts = D.iid_partition(n, k, cfg.seed)
  elif cfg.data.partition == "dirichlet":
    labels = [r.label or r.source for r in records]
    parts = D.dirichlet_partition(labels, k, cfg.data.dirichlet_alpha, cfg.seed)
  elif cfg.data.partition == "quantity":
    parts = D.quantity_skew_partition(n, k, cfg.data.dirichlet_alpha, cfg.seed)
  else:
    raise SetupError(f"unknown data.partition {cfg.data.partition!r} "
                     "(natural, dirichlet, iid, quantity)")
  return [f"client{i}" for i in range(k)], [[records[j] for j in p] for p in parts]


def _split_train_test(records, fraction: float, seed: int, name: str):
  order = np.random.default_rng([seed, 7]).permutation(len(records))
  n_test = int(round(fraction * len(records)))
  if n_test < 1 or n_test >= len(records):
    raise SetupError(f"client {name!r}: {len(records)} records cannot be split with "
                     f"test_fraction={fraction}")
  return [records[i] for i in order[n_test:]], [records[i] for i in order[:n_test]]


def client_records(cfg) -> tuple[list[str], list[list[D.MCQRecord]], list[list[D.MCQRecord]],
                                 dict[str, tuple[str, float]]]:
  """(names, train records, test records, dominant label and share per name) of every hospital,
  restricted to `data.hospitals` when it is set (their data is the same as in the full set)."""
  if cfg.data.source == "icd10":
    bench = _icd_benchmark(cfg)
    names = bench.client_names
    train_recs = [bench.clients[n].train for n in names]
    test_recs = [bench.clients[n].test for n in names]
    shares = bench.dominant_shares("train")
  elif cfg.data.source == "files":
    names, recs = _partition_files(cfg)
    pairs = [_split_train_test(r, cfg.data.test_fraction, cfg.seed, n) for n, r in zip(names, recs)]
    train_recs, test_recs = [p[0] for p in pairs], [p[1] for p in pairs]
    shares = {n: D.dominant_chapter_share(r) for n, r in zip(names, train_recs)}
  else:
    raise SetupError(f"unknown data.source {cfg.data.source!r} (icd10, files)")
  if cfg.data.hospitals:
    unknown = sorted(set(cfg.data.hospitals) - set(names))
    if unknown:
      raise SetupError(f"data.hospitals names unknown hospitals {unknown} (known: {list(names)})")
    keep = [i for i, n in enumerate(names) if n in set(cfg.data.hospitals)]
    names = [names[i] for i in keep]
    train_recs, test_recs = [train_recs[i] for i in keep], [test_recs[i] for i in keep]
  return list(names), train_recs, test_recs, shares


def load_client_data(cfg, tokenizer: Tokenizer) -> ClientData:
  """Every hospital's tokenized train and test sets (the natural non-IID split)."""
  names, train_recs, test_recs, shares = client_records(cfg)
  train = [D.tokenize_mcq(tokenizer, r, cfg.data.max_len) for r in train_recs]
  test = [D.tokenize_mcq(tokenizer, r, cfg.data.max_len) for r in test_recs]
  if cfg.eval.max_test_per_client:
    test = [t.take(np.arange(min(len(t), cfg.eval.max_test_per_client))) for t in test]
  summary = [{"client": n, "train": len(tr), "test": len(te), "dominant": shares[n][0],
              "dominant_share": round(float(shares[n][1]), 3),
              "truncated": int(tr.num_truncated + te.num_truncated)}
             for n, tr, te in zip(names, train, test)]
  truncated = sum(s["truncated"] for s in summary)
  if truncated:
    logging.warning("%d prompts were cut to data.max_len=%d", truncated, cfg.data.max_len)
  if cfg.fed.centralized:
    return ClientData(["pooled"], [D.pooled(train)], names, test, summary)
  return ClientData(list(names), train, list(names), test, summary)
