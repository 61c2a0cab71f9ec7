"""A federated run from a config: rounds, evaluation, ledger, checkpoints, export, report."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from fedlora_jax import federated as F
from fedlora_jax import ledger as L
from fedlora_jax import models
from fedlora_jax.data import round_batches
from fedlora_jax.eval import fairness_summary
from fedlora_jax.run import report
from fedlora_jax.run.attested import AttestedRounds
from fedlora_jax.run.checkpoint import Checkpointer
from fedlora_jax.run.evaluation import accuracy_matrix, own_accuracies
from fedlora_jax.run.setup import (ClientData, algorithm, expand, load_client_data, load_model,
                                   lora_config)
from fedlora_jax.run.workdir import MetricsLog, check_workdir, flat_config, write_config

PERSONALISED = ("fedsa_lora", "local")


def _algorithm(cfg) -> F.Algorithm:  # (flower) moved to setup.algorithm, shared with sites/
  return algorithm(cfg)


def _sharding(cfg, clients_per_round: int) -> F.ClientSharding | None:
  n = cfg.fed.num_devices or jax.device_count()
  if n <= 1:
    return None
  if clients_per_round % n:
    logging.warning("%d clients per round do not split over %d devices; using 1 device",
                    clients_per_round, n)
    return None
  return F.ClientSharding(F.make_mesh(n))


def _has_checkpoint(directory: str) -> bool:
  return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def _eval_loras(algorithm: F.Algorithm, state: dict) -> Any:
  """Adapters to evaluate, with a leading model axis: each client's own, or the global one."""
  if algorithm.name in PERSONALISED:
    return jax.vmap(algorithm.personal_lora, in_axes=(None, 0))(state["global_lora"],
                                                               state["client_states"])
  return jax.tree.map(lambda x: x[None], state["global_lora"])


def _per_client(matrix: np.ndarray, data: ClientData) -> tuple[list[float], list[float]]:
  """(own-test accuracy, accuracy over all hospitals' tests) per hospital.

  `matrix` is [M, T]: M == T personal models (row i is hospital i's model), or M == 1 model
  shared by every hospital (the global or centralized one).
  """
  sizes = np.asarray([len(t) for t in data.test], np.float64)
  overall_m = matrix @ sizes / sizes.sum()
  if matrix.shape[0] == 1:
    own, across = matrix[0], np.repeat(overall_m, matrix.shape[1])
  else:
    own, across = np.diag(matrix), overall_m
  return [float(a) for a in own], [float(a) for a in across]


def _own_accuracy(graphdef, base, algorithm, state, data: ClientData, batch_size: int):
  loras = _eval_loras(algorithm, state)
  if jax.tree.leaves(loras)[0].shape[0] == 1:
    return [float(a) for a in accuracy_matrix(graphdef, base, loras, data.test, batch_size)[0]]
  return [float(a) for a in own_accuracies(graphdef, base, loras, data.test, batch_size)]


def _ledger_id(cfg) -> str:
  digest = hashlib.sha256(json.dumps(flat_config(cfg), sort_keys=True, default=str).encode())
  return f"fedlora-jax-{digest.hexdigest()[:16]}"


def run(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs (or resumes) the federated job described by `cfg`; returns the final summary."""
  workdir = expand(cfg.workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  has_ckpt = _has_checkpoint(ckpt_dir)
  check_workdir(workdir, cfg, has_checkpoint=has_ckpt, resume=cfg.resume)

  model, tokenizer, base_dir = load_model(cfg)
  data = load_client_data(cfg, tokenizer)
  write_config(workdir, cfg)  # only now: a start that fails on bad input leaves no trace
  graphdef, base, lora = models.split_lora(model)
  algorithm = _algorithm(cfg)
  num_clients = len(data.train)
  per_round = F.clients_per_round(num_clients, count=cfg.fed.clients_per_round or None)
  max_targets = int(max(t.loss_mask.sum(axis=1).max() for t in data.train))
  training = F.LocalTraining(
      local_steps=cfg.fed.local_steps, optimizer=cfg.fed.local_optimizer,
      learning_rate=cfg.fed.local_lr, weight_decay=cfg.fed.weight_decay,
      grad_clip_norm=cfg.fed.grad_clip_norm or None, uniform_weights=cfg.fed.uniform_weights,
      max_target_tokens=max_targets)
  engine = F.FederatedRound(graphdef, algorithm, training, num_clients,
                            _sharding(cfg, per_round))
  state = F.init_state(algorithm, lora, num_clients, cfg.seed)
  ckpt = Checkpointer(ckpt_dir, every=cfg.checkpoint.every, keep=cfg.checkpoint.keep)
  start = 0
  if has_ckpt and cfg.resume:
    latest = ckpt.latest_round()
    like = {"state": state, **({"base": base} if algorithm.updates_base else {})}
    try:
      restored, meta = ckpt.restore(latest, like)
    except Exception as e:  # orbax raises assorted errors for mismatched trees
      raise ValueError(f"checkpoint {ckpt_dir}/{latest} does not match this config: {e}") from e
    state = restored["state"]
    base = restored.get("base", base)
    start = int(meta["round"])
    logging.info("resumed %s at round %d", workdir, start)
  state, base = engine.place(state, base)

  attested = None
  if cfg.ledger.enabled:
    attested = AttestedRounds(workdir, data.train_names, ledger_id=_ledger_id(cfg),
                              seed=cfg.seed, backend=cfg.ledger.backend)
  # Records past the checkpoint are dropped (they will be recomputed); a fresh start keeps none.
  metrics_log = MetricsLog(os.path.join(workdir, "metrics.jsonl"),
                           keep_until_round=start if start else -1)
  logging.info("clients: %s", data.summary)
  matrix = None
  if start == 0:  # the base model before any federated training, for reference
    t0 = time.time()
    own = _own_accuracy(graphdef, base, algorithm, state, data, cfg.eval.batch_size)
    record0 = {"round": 0, "clients": [], "loss": [], "valid": [], "weights": [], "ledger": {},
               "accuracy": dict(zip(data.test_names, own)), "summary": fairness_summary(own),
               "seconds": round(time.time() - t0, 3)}
    metrics_log.append(record0)
    _progress(record0, 0)
  for r in range(start, cfg.fed.rounds):
    t0 = time.time()
    ids = F.sample_clients(num_clients, per_round, seed=cfg.seed, round_idx=r)
    batches, counts = _round_batches(cfg, data, ids, r)
    ledger_info: dict[str, Any] = {}
    timing: dict[str, float] = {"data_s": time.time() - t0}
    if attested is None:
      out = engine(state, base, batches, ids, counts)
    else:
      trained = engine.train(state, base, batches, ids)
      local_c = jax.device_get(trained[0])
      timing["train_s"] = time.time() - t0 - timing["data_s"]
      recorded = attested.recorded_block(r + 1)
      if recorded is None:
        accept, verdict = attested.verify(r + 1, ids, local_c, counts)
      else:  # re-running a round whose block was written before a crash
        names = {p["name"] for p in recorded["participants"]}
        accept = np.asarray([data.train_names[c] in names for c in ids])
      out = engine.aggregate(state, base, trained, ids, counts, accept)
    if algorithm.updates_base:
      state, base, m = out
    else:
      state, m = out
    global_host = jax.device_get(state["global_lora"])
    if attested is not None:
      gdigest = L.tree_digest(models.peft_tensors(global_host))
      if recorded is None:
        block = attested.record(r + 1, verdict, gdigest, algorithm.name)
      elif recorded["global_digest"] != gdigest.hex():
        raise L.LedgerError(f"round {r + 1}: recomputed global adapter differs from the ledger's "
                            "record (non-deterministic resume?)")
      else:
        block = recorded
      ledger_info = {"accepted": len(block["participants"]),
                     "rejected": [x["reason"] for x in block["rejected"]],
                     "block": block["index"]}
    record: dict[str, Any] = {
        "round": r + 1, "clients": [data.train_names[c] for c in ids],
        "loss": np.asarray(m["loss"]).mean(axis=1).round(5).tolist(),
        "valid": np.asarray(m["valid"]).tolist(), "weights": np.asarray(m["weights"]).tolist(),
        "ledger": ledger_info}
    last = r + 1 == cfg.fed.rounds
    timing["round_s"] = time.time() - t0
    if last:  # the full model x test-set matrix
      matrix = accuracy_matrix(graphdef, base, _eval_loras(algorithm, state), data.test,
                               cfg.eval.batch_size)
      own, across = _per_client(matrix, data)
      record.update(accuracy=dict(zip(data.test_names, own)), summary=fairness_summary(own),
                    accuracy_all_tests=dict(zip(data.test_names, across)))
    elif (r + 1) % cfg.eval.every == 0:  # each hospital's own test set only
      own = _own_accuracy(graphdef, base, algorithm, state, data, cfg.eval.batch_size)
      record.update(accuracy=dict(zip(data.test_names, own)), summary=fairness_summary(own))
    record["seconds"] = round(time.time() - t0, 3)
    record["timing"] = {k: round(v, 3) for k, v in timing.items()}
    trees = {"state": state, **({"base": base} if algorithm.updates_base else {})}
    ckpt.save(r + 1, trees, {"round": r + 1, "ledger_head": attested.ledger.head_hash
                             if attested else None}, force=last)
    metrics_log.append(record)
    _progress(record, per_round)
  ckpt.close()
  if matrix is None:  # resumed after the last round: evaluate once more
    matrix = accuracy_matrix(graphdef, base, _eval_loras(algorithm, state), data.test,
                             cfg.eval.batch_size)
  return _finish(cfg, workdir, model, graphdef, base, state, algorithm, data, matrix, base_dir,
                 attested)


def _round_batches(cfg, data: ClientData, ids, r):
  return round_batches(data.train, local_steps=cfg.fed.local_steps,
                       batch_size=cfg.fed.batch_size, seed=cfg.seed, round_idx=r, client_ids=ids)


def _progress(record: dict[str, Any], per_round: int) -> None:
  line = f"round {record['round']:3d} | clients {per_round}"
  if record["loss"]:
    line += f" | loss {float(np.mean(record['loss'])):.4f}"
  if "summary" in record:
    s = record["summary"]
    line += (f" | acc mean {s['mean']:.3f} worst {s['min']:.3f} hmean "
             f"{s['harmonic_mean']:.3f}")
  if record["ledger"]:
    line += f" | ledger block {record['ledger']['block']} ({record['ledger']['accepted']} attested)"
  logging.info("%s | %.1f s", line, record["seconds"])


def _finish(cfg, workdir, model, graphdef, base, state, algorithm, data, matrix, base_dir,
            attested) -> dict[str, Any]:
  """Exports the adapter(s) in PEFT format, checks provenance, writes summary and report."""
  lcfg = lora_config(cfg)
  adapted = models.merge(graphdef, base, jax.device_get(state["global_lora"]))
  adapter_dir = os.path.join(workdir, "adapter")
  adapter_file = models.export_peft_adapter(jax.device_get(state["global_lora"]), adapted, lcfg,
                                            adapter_dir, base_model_name_or_path=base_dir)
  if algorithm.updates_base:  # FedEx-LoRA folded residuals into the base: ship it too
    models.save_hf_checkpoint(adapted, os.path.join(workdir, "base_with_residuals"))
  if algorithm.name in PERSONALISED:
    loras = jax.device_get(_eval_loras(algorithm, state))
    for i, name in enumerate(data.train_names):
      models.export_peft_adapter(jax.tree.map(lambda x: x[i], loras), adapted, lcfg,
                                 os.path.join(workdir, "adapters", name),
                                 base_model_name_or_path=base_dir)
  own, across = _per_client(matrix, data)
  summary: dict[str, Any] = {
      "algorithm": algorithm.name, "centralized": bool(cfg.fed.centralized),
      "rounds": cfg.fed.rounds, "clients": data.summary,
      "accuracy": dict(zip(data.test_names, own)), "fairness": fairness_summary(own),
      "accuracy_all_tests": dict(zip(data.test_names, across)),
      "matrix": matrix.tolist(), "matrix_rows": (data.train_names if matrix.shape[0] > 1
                                                 else ["global"]),
      "adapter": adapter_file,
  }
  if attested is not None:
    digest = L.adapter_file_digest(adapter_file)
    prov = L.find_provenance(attested.path, digest)
    check = L.verify_ledger(attested.path)
    summary["ledger"] = {"path": attested.path, "valid": check.ok, "blocks": check.num_blocks,
                         "adapter_digest": digest.hex(),
                         "adapter_block": None if prov is None else prov.block_index}
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  report.write_report(workdir, summary)
  logging.info("final: mean %.3f worst %.3f hmean %.3f -> %s", summary["fairness"]["mean"],
               summary["fairness"]["min"], summary["fairness"]["harmonic_mean"], workdir)
  return summary
