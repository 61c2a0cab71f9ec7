"""A federated run from a config: setup, the round loop with its hooks, export and report.

The same program runs as one process or as one of several (`jax.distributed`, a `clients x model`
mesh): each process loads only the hospitals that live on its devices, process 0 alone writes the
run directory's files, and every process takes part in the jitted rounds, the evaluation and
orbax's saves and restores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from fedlora_jax import federated as F
from fedlora_jax import models
from fedlora_jax.eval import fairness_summary
from fedlora_jax.federated import distributed
from fedlora_jax.federated.placement import ClientPlacement
from fedlora_jax.generation import text
from fedlora_jax.run import generative_eval, multihost, report
from fedlora_jax.run.checkpoint import Checkpointer
from fedlora_jax.run.evaluation import Evaluator
from fedlora_jax.run.gates import (Gate, LedgerGate, OpenGate, base_digest, base_tensors,
                                   ledger_rules)
from fedlora_jax.run.dp_keys import DpKeys
from fedlora_jax.run.hooks import (PERSONALISED, CheckpointHook, EvaluationHook, Job, MetricsHook,
                                   PrivacyHook, eval_loras, per_client, progress)
from fedlora_jax.run.loop import RoundRunner, run_rounds
from fedlora_jax.run.privacy_setup import open_privacy, privacy_meter, privacy_summary
from fedlora_jax.run.setup import (ClientData, base_model_dir, check_clinic_config, client_records,
                                   expand, hospital_names, load_client_data, load_model,
                                   local_steps, lora_config)
from fedlora_jax.run.workdir import check_workdir, flat_config, write_config, write_json
# (flower) algorithm and local training are built in setup, shared with fedlora_jax/sites
from fedlora_jax.run.setup import algorithm as _algorithm, local_training as _training


def _sharding(cfg) -> F.ClientSharding | None:
  """The run's mesh from the `mesh` section (None on a single device)."""
  if jax.device_count() == 1 and cfg.mesh.clients in (0, 1) and cfg.mesh.model in (0, 1):
    return None
  return F.ClientSharding(distributed.global_mesh(cfg.mesh.clients, cfg.mesh.model))


def _has_checkpoint(directory: str) -> bool:
  return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def _ledger_label(cfg) -> str:
  """The readable part of the ledger id (the genesis adds a fresh random nonce)."""
  digest = hashlib.sha256(json.dumps(flat_config(cfg), sort_keys=True, default=str).encode())
  return f"fedlora-jax-{digest.hexdigest()[:16]}"


def _load_data(cfg, tokenizer, placement: ClientPlacement, test_placement: ClientPlacement
               ) -> ClientData:
  me = jax.process_index()
  data = load_client_data(cfg, tokenizer, hospitals=test_placement.hospitals_of(me),
                          gather=multihost.allgather_json,
                          pooled_here=placement.home[0] == me)
  logging.info("process %d of %d holds hospitals %s", me, jax.process_count(),
               [data.test_names[t] for t in sorted(data.test)])
  return data


def run(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs (or resumes) the federated job described by `cfg`; returns the final summary."""
  algorithm = _algorithm(cfg)  # refuses a bad combination before anything is written
  check_clinic_config(cfg)
  workdir = expand(cfg.workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  has_ckpt = _has_checkpoint(ckpt_dir)
  check_workdir(workdir, cfg, has_checkpoint=has_ckpt, resume=cfg.resume)
  generative_eval.check_mode(cfg, jax.process_count())
  sharding = _sharding(cfg)
  mesh = None if sharding is None else sharding.mesh
  if multihost.is_writer():  # the cached tiny base and tokenizer: built once, then read by all
    base_model_dir(cfg)
  multihost.sync("base model prepared")
  model, tokenizer, base_dir = load_model(cfg)
  num_hospitals = len(hospital_names(cfg))
  test_placement = ClientPlacement.create(num_hospitals, mesh)
  clinics = cfg.data.get("clinics", 0)
  placement = (ClientPlacement.create(1, mesh) if cfg.fed.centralized else
               ClientPlacement.create(clinics, mesh) if clinics else test_placement)
  data = _load_data(cfg, tokenizer, placement, test_placement)
  if multihost.is_writer():
    write_config(workdir, cfg)  # only now: a start that fails on bad input leaves no trace
  graphdef, base, lora = models.split_lora(model)
  num_clients = len(data.train_names)
  per_round = F.clients_per_round(num_clients, count=cfg.fed.clients_per_round or None)
  resuming = has_ckpt and cfg.resume
  plan, run_nonce = open_privacy(cfg, workdir, data.train_names, data.train_sizes, per_round,
                                 resuming=resuming)
  steps = local_steps(cfg, data)  # the centralized client takes one round's hospitals' steps
  engine = F.FederatedRound(graphdef, algorithm, _training(cfg, data.max_target_tokens, steps),
                            num_clients, sharding, client_group_size=cfg.fed.client_group_size,
                            safeguards=plan.safeguards)
  state = F.init_state(algorithm, lora, num_clients, cfg.seed, plan.safeguards)
  ckpt = Checkpointer(ckpt_dir, every=cfg.checkpoint.every, keep=cfg.checkpoint.keep)
  state, base = engine.place(state, base)
  # FedEx-LoRA changes the base: its ledger blocks bind the change since this original.
  original = (base_tensors(base) if cfg.ledger.enabled and algorithm.updates_base
              and multihost.is_writer() else None)
  # The genesis binds the base as loaded (quantized when it is), before any resumed change.
  genesis_base = base_digest(base) if cfg.ledger.enabled and multihost.is_writer() else None
  start = 0
  if has_ckpt and cfg.resume:
    latest = ckpt.latest_round()
    like = {"state": state, **({"base": base} if algorithm.updates_base else {})}
    try:
      restored, meta = ckpt.restore(latest, like)
    except Exception as e:  # orbax raises assorted errors for mismatched trees
      raise ValueError(f"checkpoint {ckpt_dir}/{latest} does not match this config: {e}") from e
    state, base = restored["state"], restored.get("base", base)
    start = int(meta["round"])
    logging.info("resumed %s at round %d", workdir, start)

  gate: Gate
  if cfg.ledger.enabled:
    gate = LedgerGate(workdir, cfg.ledger, label=_ledger_label(cfg),
                      rules=ledger_rules(cfg, plan.noise_multiplier, plan.max_clients or per_round,
                                         genesis_base, plan.sampling_rate * num_clients),
                      train_names=data.train_names, train_sizes=data.train_sizes,
                      local_clients=placement.hospitals_of(jax.process_index()),
                      original_base=original)
  else:
    gate = OpenGate(data.train_sizes)
  job = Job(state=state, base=base, rounds=cfg.fed.rounds, algorithm=algorithm,
            test_names=data.test_names, test_sizes=data.test_sizes)
  evaluation = EvaluationHook(
      Evaluator(graphdef, data.test, test_placement, sharding, batch_size=cfg.eval.batch_size,
                group_size=cfg.eval.group_size),
      every=cfg.eval.every, round_max_questions=cfg.eval.round_max_test_per_client)
  metrics = MetricsHook(workdir, keep_until_round=start if start else -1,
                        clients_per_round=plan.max_clients or per_round)
  hooks = [evaluation, metrics,
           CheckpointHook(ckpt, lambda: getattr(gate, "head_hash", None))]
  dp_keys = DpKeys.open(cfg, workdir, data.train_names,
                        placement.hospitals_of(jax.process_index()), run_nonce=run_nonce,
                        resuming=resuming)
  runner = RoundRunner(engine, placement, data, clients_per_round=per_round,
                       local_steps=steps, batch_size=cfg.fed.batch_size,
                       seed=cfg.seed, max_batch_size=plan.max_batch_size, dp_keys=dp_keys,
                       sampling_rate=plan.sampling_rate, max_clients=plan.max_clients)
  # the privacy cost of the rounds already run is counted (resume)
  meter = runner.privacy = privacy_meter(cfg, plan, data.train_names, start, runner.participants)
  if multihost.is_writer():
    logging.info("clients: %s", data.summary)
  if start == 0:
    record0 = evaluation.base_record(job)
    if metrics.log is not None:
      metrics.log.append(record0)
      progress(record0, 0)
  if meter is not None:  # the budget stop comes before the checkpoint it forces
    hooks.insert(1, PrivacyHook(runner.would_exceed_budget,
                                target_epsilon=cfg.privacy.target_epsilon))
  run_rounds(job, runner, gate, hooks, start)
  gate.close()
  ckpt.close()
  metrics.close()
  matrix = evaluation.matrix
  if matrix is None:  # resumed after the last round: evaluate once more
    matrix = evaluation.full_matrix(job)
  generative = None
  if cfg.eval.mode == "generate":
    generative = _generative_scores(cfg, graphdef, job, data, tokenizer, base_dir)
  return _finish(cfg, workdir, graphdef, job, data, matrix, evaluation.correct, base_dir, gate,
                 privacy_summary(cfg, plan), generative)


def _generative_scores(cfg, graphdef, job: Job, data: ClientData, tokenizer, base_dir: str
                       ) -> dict[str, Any]:
  """eval.mode=generate: the final adapters' free-text accuracy on each hospital's test set."""
  test_records = client_records(cfg, set(range(len(data.test_names))))[2]
  records = {t: list(test_records[t][:len(data.test[t])]) for t in data.test}
  accuracy = generative_eval.generative_accuracy(
      graphdef, job.base, eval_loras(job.algorithm, job.state), data.test, records, tokenizer,
      text.stop_ids(base_dir, tokenizer), cfg.eval.batch_size)
  logging.info("generate: %s", ", ".join(f"{n} {a:.3f}" for n, a in
                                         zip(data.test_names, accuracy)))
  return generative_eval.summary(data.test_names, accuracy)


def _finish(cfg, workdir: str, graphdef, job: Job, data: ClientData, matrix, correct,
            base_dir: str, gate: Gate, privacy: dict[str, Any] | None,
            generative: dict[str, Any] | None = None) -> dict[str, Any]:
  """Exports the adapter(s) in PEFT format, checks provenance, writes summary, per-question
  correctness (`correct.npz`: test set -> [M, N_t] bool, for compare's paired bootstraps) and
  the report."""
  algorithm = job.algorithm
  personal = eval_loras(algorithm, job.state) if algorithm.name in PERSONALISED else None
  summary: dict[str, Any] = {}
  if multihost.is_writer():  # host copies from process 0's own shards: no collective here
    global_lora = jax.tree.map(multihost.host_value, job.state["global_lora"])
    base = jax.tree.map(multihost.host_value, job.base)
    personal = None if personal is None else jax.tree.map(multihost.host_value, personal)
    lcfg = lora_config(cfg)
    adapted = models.merge(graphdef, base, global_lora)
    adapter_file = models.export_peft_adapter(global_lora, adapted, lcfg,
                                              os.path.join(workdir, "adapter"),
                                              base_model_name_or_path=base_dir)
    if algorithm.updates_base:  # FedEx-LoRA folded residuals into the base: ship it too
      models.save_hf_checkpoint(adapted, os.path.join(workdir, "base_with_residuals"))
    if personal is not None:
      for i, name in enumerate(data.train_names):
        models.export_peft_adapter(jax.tree.map(lambda x: x[i], personal), adapted, lcfg,
                                   os.path.join(workdir, "adapters", name),
                                   base_model_name_or_path=base_dir)
    own, across = per_client(matrix, data.test_sizes)
    summary = {
        "algorithm": algorithm.name, "centralized": bool(cfg.fed.centralized),
        "rounds": cfg.fed.rounds, "clients": data.summary,
        "accuracy": dict(zip(data.test_names, own)), "fairness": fairness_summary(own),
        "accuracy_all_tests": dict(zip(data.test_names, across)),
        "matrix": matrix.tolist(), "matrix_rows": (data.train_names if matrix.shape[0] > 1
                                                   else ["global"]),
        "adapter": adapter_file,
    }
    if privacy is not None:
      summary["privacy"] = privacy
    if cfg.model.quantize != "none":
      summary["base_quantization"] = {
          "kind": cfg.model.quantize, "bits": models.quant.BITS[cfg.model.quantize],
          "block_size": cfg.model.quant_block_size,
          "scale_dtype": cfg.model.quant_scale_dtype}
    if generative is not None:
      summary["generate"] = generative
    np.savez_compressed(os.path.join(workdir, "correct.npz"), **dict(zip(data.test_names, correct)))
    ledger = gate.summary(adapter_file)
    if ledger:
      summary["ledger"] = ledger
    write_json(os.path.join(workdir, "summary.json"), summary)
    report.write_report(workdir, summary)
    logging.info("final: mean %.3f worst %.3f hmean %.3f -> %s", summary["fairness"]["mean"],
                 summary["fairness"]["min"], summary["fairness"]["harmonic_mean"], workdir)
  return multihost.broadcast_json(summary)
