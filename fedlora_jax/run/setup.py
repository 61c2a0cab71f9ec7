"""Builds what a run needs from its config: tokenizer, base model with LoRA, clients' data."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
from flax import nnx
from tokenizers import Tokenizer

from fedlora_jax import data as D
from fedlora_jax import federated as F
from fedlora_jax import models
from fedlora_jax.data.clinics import check_clinics, clinic_names, split_records
from fedlora_jax.federated.sampling import clients_per_round
from fedlora_jax.pretrain import pretrain_base


class SetupError(ValueError):
  """A config that cannot be set up (bad path, inconsistent fields)."""


@dataclasses.dataclass
class ClientData:
  """Training clients and evaluation test sets (the same hospitals, except when centralized).

  Only this process's hospitals are tokenized and held (`train`, `test` are keyed by index);
  names and sizes are known for all of them.

  Attributes:
    train_names: every training client, in id order.
    train: {client id: tokenized training set} for this process's clients.
    test_names: every hospital with a test set, in order.
    test: {test index: tokenized test set} for this process's test sets.
    summary: one dict per hospital (sizes, dominant label and share), all hospitals.
    train_sizes: [N] every training client's number of examples.
    max_target_tokens: the most answer tokens in any training example of any client.
  """

  train_names: list[str]
  train: dict[int, D.TokenizedMCQ]
  test_names: list[str]
  test: dict[int, D.TokenizedMCQ]
  summary: list[dict[str, Any]]
  train_sizes: list[int]
  max_target_tokens: int

  @property
  def test_sizes(self) -> list[int]:
    return [s["test"] for s in self.summary]


def local_steps(cfg: ml_collections.ConfigDict, data: ClientData) -> int:
  """Local steps per round. The pooled (centralized) client takes the steps of all of one round's
  hospitals together, so it sees as many examples per round as the federation (the fair upper
  reference); a federated client takes `fed.local_steps`."""
  if not cfg.fed.centralized:
    return cfg.fed.local_steps
  per_round = clients_per_round(len(data.test_names), count=cfg.fed.clients_per_round or None)
  return cfg.fed.local_steps * per_round


def expand(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path)) if path else path


def lora_config(cfg: ml_collections.ConfigDict) -> models.LoRAConfig:
  return models.LoRAConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                           target_modules=tuple(cfg.lora.target_modules),
                           target_regex=cfg.lora.target_regex or None,
                           use_rslora=cfg.lora.use_rslora, dropout=cfg.lora.dropout)


def data_seed(cfg) -> int:
  """Seed of the embedded benchmark's split and of the tiny base's pretraining: `data.seed`, or
  the run's seed when that is -1. Fixing it makes seeds vary only the federated runs."""
  return cfg.seed if cfg.data.seed < 0 else cfg.data.seed


def check_quantization(cfg: ml_collections.ConfigDict) -> None:
  """Refuses a bad `model.quantize` format, and FedEx-LoRA over a quantized base (its server
  step folds a residual into the base weights, which would then need re-quantizing)."""
  try:
    models.quant.check_format(cfg.model.quantize, cfg.model.quant_block_size,
                              cfg.model.quant_scale_dtype)
  except ValueError as e:
    raise SetupError(str(e)) from None
  if cfg.model.quantize != "none" and cfg.fed.algorithm == "fedex_lora":
    raise SetupError(f"fed.algorithm='fedex_lora' cannot run over model.quantize="
                     f"{cfg.model.quantize!r}: its residual folds into the frozen base, which is "
                     "stored quantized; use model.quantize='none' or another algorithm")


def check_clinic_config(cfg: ml_collections.ConfigDict) -> None:
  """Refuses `data.clinics` where a clinic cannot be a client (the count itself is checked
  against the records in `load_client_data`)."""
  clinics = cfg.data.get("clinics", 0)
  if not clinics:
    return
  if cfg.data.source != "icd10":
    raise SetupError(f"data.clinics={clinics} splits the icd10 hospitals; data.source="
                     f"{cfg.data.source!r} has no such hospitals (use data.partition)")
  if cfg.fed.centralized:
    raise SetupError("data.clinics with fed.centralized=True: the pooled client has no clinics")
  if cfg.fed.algorithm in ("fedsa_lora", "local"):
    raise SetupError(f"data.clinics with fed.algorithm={cfg.fed.algorithm!r}: a clinic's "
                     "personal adapter has no test set of its own (tests are per hospital)")


def algorithm(cfg: ml_collections.ConfigDict) -> F.Algorithm:
  """The federated algorithm `fed.algorithm` with its hyper-parameters from the config (refused
  where `check_quantization` refuses the config)."""
  check_quantization(cfg)
  f = cfg.fed
  return F.make_algorithm(f.algorithm, server_lr=f.server_lr, server_momentum=f.server_momentum,
                          server_b1=f.server_b1, server_b2=f.server_b2, server_eps=f.server_eps,
                          fedprox_mu=f.fedprox_mu, local_lr=f.local_lr,
                          lora_scaling=lora_config(cfg).scaling)


def local_training(cfg: ml_collections.ConfigDict, max_target_tokens: int,
                   steps: int) -> F.LocalTraining:
  """Each client's local optimisation (`max_target_tokens`: the max over all clients; `steps`:
  `local_steps`)."""
  f = cfg.fed
  return F.LocalTraining(
      local_steps=steps, optimizer=f.local_optimizer, learning_rate=f.local_lr,
      weight_decay=f.weight_decay, grad_clip_norm=f.grad_clip_norm or None,
      uniform_weights=f.uniform_weights, max_target_tokens=max_target_tokens)


def _icd_benchmark(cfg) -> D.ICD10Benchmark:
  try:
    return D.build_icd10_benchmark(level=cfg.data.level, seed=data_seed(cfg),
                                   cache_dir=expand(cfg.cache_dir),
                                   chapter_style=cfg.data.chapter_style,
                                   train_scale=cfg.data.get("scale", 1))
  except ValueError as e:
    raise SetupError(f"data (icd10, data.scale={cfg.data.get('scale', 1)!r}): {e}") from e


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
  # Public text only: unlabelled descriptions of codes that no hospital holds (every benchmark code
  # is left out with its 7th-character variants, so no train, val or test description is seen
  # before federated training), the chapter and block titles, and format drills (random options
  # and answers). Which chapter a description belongs to is learnt from the hospitals only.
  held = _benchmark_codes(_icd_benchmark(cfg))
  descriptions = D.public_descriptions(held, cfg.pretrain.descriptions, seed=data_seed(cfg))
  drills = D.format_drills(held, cfg.pretrain.format_drills, level=cfg.data.level,
                           seed=data_seed(cfg), chapter_style=cfg.data.chapter_style)
  texts = (descriptions + D.icd10_titles()
           + [D.format_prompt(q) + D.answer_text(q) for q in drills])
  return pretrain_base(arch, tokenizer, texts, steps=cfg.pretrain.steps,
                       batch_size=cfg.pretrain.batch_size, seq_len=cfg.pretrain.seq_len,
                       learning_rate=cfg.pretrain.learning_rate, seed=data_seed(cfg),
                       cache_dir=os.path.join(cache, "bases"))


def load_model(cfg) -> tuple[models.CausalLM, Tokenizer, str]:
  """(model with LoRA attached, tokenizer, base directory)."""
  base_dir = base_model_dir(cfg)
  model = models.load_hf_checkpoint(base_dir, param_dtype=cfg.model.param_dtype,
                                    dtype=cfg.model.dtype, remat_policy=cfg.model.remat_policy,
                                    attention_impl=cfg.model.attention_impl,
                                    fuse_lora=cfg.model.fuse_lora,
                                    scan_layers=cfg.model.scan_layers,
                                    quantize=cfg.model.quantize,
                                    quant_block_size=cfg.model.quant_block_size,
                                    quant_scale_dtype=cfg.model.quant_scale_dtype)
  models.add_lora(model, lora_config(cfg), rngs=nnx.Rngs(lora=cfg.seed))
  return model, D.load_hf_tokenizer(base_dir), base_dir


FILE_SOURCES = (("medqa", D.load_medqa), ("medmcqa", D.load_medmcqa),
                ("pubmedqa", D.load_pubmedqa))


def _file_sources(cfg) -> list[tuple[str, Any, str]]:
  sources = [(name, fn, expand(cfg.data[name])) for name, fn in FILE_SOURCES if cfg.data[name]]
  if not sources:
    raise SetupError("data.source='files' needs at least one of data.medqa, data.medmcqa, "
                     "data.pubmedqa")
  return sources


def _partition_files(cfg, wanted: set[int]) -> tuple[list[str], dict[int, list[D.MCQRecord]]]:
  """(client names, {client id: records}) for the `wanted` clients.

  The natural partition (one client per file) reads only the wanted files; the synthetic ones
  (dirichlet, iid, quantity) split the pooled records and so read every file.
  """
  sources = _file_sources(cfg)
  if cfg.data.partition == "natural":
    return ([name for name, _, _ in sources],
            {i: fn(path) for i, (_, fn, path) in enumerate(sources) if i in wanted})
  records = [r for _, fn, path in sources for r in fn(path)]
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
  return ([f"client{i}" for i in range(k)],
          {i: [records[j] for j in p] for i, p in enumerate(parts) if i in wanted})


def _source_names(cfg) -> list[str]:
  """Every hospital of the configured data source, in order (reads no records)."""
  if cfg.data.source == "icd10":
    return list(_icd_benchmark(cfg).client_names)
  if cfg.data.source == "files":
    if cfg.data.partition == "natural":
      return [name for name, _, _ in _file_sources(cfg)]
    return [f"client{i}" for i in range(cfg.data.num_clients)]
  raise SetupError(f"unknown data.source {cfg.data.source!r} (icd10, files)")


def _selected(cfg, names: Sequence[str]) -> list[int]:
  """Positions among the source's `names` of the hospitals `data.hospitals` keeps (all when
  empty)."""
  if not cfg.data.hospitals:
    return list(range(len(names)))
  unknown = sorted(set(cfg.data.hospitals) - set(names))
  if unknown:
    raise SetupError(f"data.hospitals names unknown hospitals {unknown} (known: {list(names)})")
  return [i for i, n in enumerate(names) if n in set(cfg.data.hospitals)]


def hospital_names(cfg) -> list[str]:
  """The hospitals of the run (`data.hospitals` of the source's, else all), in id order (reads
  no records)."""
  names = _source_names(cfg)
  return [names[i] for i in _selected(cfg, names)]


def _split_train_test(records, fraction: float, seed: int, name: str):
  order = np.random.default_rng([seed, 7]).permutation(len(records))
  n_test = int(round(fraction * len(records)))
  if n_test < 1 or n_test >= len(records):
    raise SetupError(f"client {name!r}: {len(records)} records cannot be split with "
                     f"test_fraction={fraction}")
  return [records[i] for i in order[n_test:]], [records[i] for i in order[:n_test]]


def client_records(cfg, wanted: set[int]):
  """(names, {hospital: train records}, {hospital: test records}, {hospital: dominant share})
  of the `wanted` hospital ids of the run (`hospital_names` order); their records are the same
  as in the source's full set."""
  keep = _selected(cfg, _source_names(cfg))
  names, train, test, shares = _source_records(cfg, {keep[i] for i in wanted})
  if cfg.data.extra_train:
    extra = D.load_extra_train(expand(cfg.data.extra_train))
    unknown = sorted(set(extra) - {names[k] for k in keep})
    if unknown:
      raise SetupError(f"data.extra_train {cfg.data.extra_train} names hospitals {unknown} not "
                       f"in this run ({[names[k] for k in keep]})")
    train = {k: list(v) + extra.get(names[k], []) for k, v in train.items()}
  run_id = {k: i for i, k in enumerate(keep)}
  return ([names[k] for k in keep], *({run_id[k]: v for k, v in d.items()}
                                      for d in (train, test, shares)))


def _source_records(cfg, wanted: set[int]):
  """`client_records` with ids among all of the source's hospitals."""
  if cfg.data.source == "icd10":
    bench = _icd_benchmark(cfg)
    names = list(bench.client_names)
    shares = bench.dominant_shares("train")
    return (names, {i: bench.clients[names[i]].train for i in wanted},
            {i: bench.clients[names[i]].test for i in wanted},
            {i: shares[names[i]] for i in wanted})
  if cfg.data.source == "files":
    if cfg.data.get("scale", 1) != 1:
      raise SetupError(f"data.scale={cfg.data.scale!r} draws more icd10 records; data.source="
                       "'files' has the records its files hold (data.scale must be 1)")
    names, recs = _partition_files(cfg, wanted)
    pairs = {i: _split_train_test(r, cfg.data.test_fraction, cfg.seed, names[i])
             for i, r in recs.items()}
    return (names, {i: p[0] for i, p in pairs.items()}, {i: p[1] for i, p in pairs.items()},
            {i: D.dominant_chapter_share(p[0]) for i, p in pairs.items()})
  raise SetupError(f"unknown data.source {cfg.data.source!r} (icd10, files)")


def load_client_data(cfg, tokenizer: Tokenizer, hospitals: Sequence[int] | None = None,
                     gather: Callable[[Any], list[Any]] = lambda x: [x],
                     pooled_here: bool = True) -> ClientData:
  """The tokenized train and test sets of `hospitals` (default: all), natural non-IID split.

  `gather` shares each process's small per-hospital summary with the others (multi-process
  runs pass `multihost.allgather_json`), so every process knows every hospital's sizes without
  seeing its records. With `fed.centralized` the single training client pools every hospital's
  training data; it is built only where `pooled_here` (the process that runs it).
  """
  every = range(len(hospital_names(cfg)))
  wanted = set(every if hospitals is None else hospitals)
  centralized = bool(cfg.fed.centralized)
  names, train_recs, test_recs, shares = client_records(cfg, wanted)
  train = {i: D.tokenize_mcq(tokenizer, r, cfg.data.max_len) for i, r in train_recs.items()}
  test = {i: D.tokenize_mcq(tokenizer, r, cfg.data.max_len) for i, r in test_recs.items()}
  if cfg.eval.max_test_per_client:
    test = {i: t.take(np.arange(min(len(t), cfg.eval.max_test_per_client)))
            for i, t in test.items()}
  local = [{"client": names[i], "train": len(train[i]), "test": len(test[i]),
            "dominant": shares[i][0], "dominant_share": round(float(shares[i][1]), 3),
            "truncated": int(train[i].num_truncated + test[i].num_truncated),
            "max_targets": int(train[i].loss_mask.sum(axis=1).max())} for i in sorted(wanted)]
  summary = sorted((s for part in gather(local) for s in part),
                   key=lambda s: names.index(s["client"]))
  truncated = sum(s["truncated"] for s in summary)
  if truncated:
    logging.warning("%d prompts were cut to data.max_len=%d", truncated, cfg.data.max_len)
  max_targets = max(s.pop("max_targets") for s in summary)
  if cfg.data.get("clinics", 0):
    return _clinic_data(cfg.data.clinics, names, train, test, summary, max_targets)
  if not centralized:
    return ClientData(names, train, names, test, summary, [s["train"] for s in summary],
                      max_targets)
  pooled = {}
  if pooled_here:
    others = client_records(cfg, set(every) - wanted)[1]
    train.update({i: D.tokenize_mcq(tokenizer, r, cfg.data.max_len) for i, r in others.items()})
    pooled = {0: D.pooled([train[i] for i in every])}
  return ClientData(["pooled"], pooled, names, test, summary,
                    [sum(s["train"] for s in summary)], max_targets)


def _clinic_data(clinics: int, names: list[str], train: dict[int, D.TokenizedMCQ],
                 test: dict[int, D.TokenizedMCQ], summary: list[dict[str, Any]],
                 max_targets: int) -> ClientData:
  """`data.clinics`: each hospital's training set dealt into clinics (data/clinics.py); the test
  sets stay the hospitals'. Needs every hospital here (one process)."""
  if sorted(train) != list(range(len(names))):
    raise SetupError("data.clinics needs every hospital's records in this process (one process)")
  try:
    check_clinics(clinics, [len(train[h]) for h in range(len(names))])
  except ValueError as e:
    raise SetupError(str(e)) from None
  per = clinics // len(names)
  parts = [train[h].take(np.asarray(idx, np.int64)) for h in range(len(names))
           for idx in split_records(np.arange(len(train[h])), per)]
  for s in summary:
    s["clinics"] = per
  return ClientData(clinic_names(names, clinics), dict(enumerate(parts)), names, test, summary,
                    [len(p) for p in parts], max_targets)
