"""The server's side of a sites run: sampling, verification, the jitted aggregation, the ledger,
checkpoints and the run directory (the same files as `scripts/train.py` writes).

The network is behind `Transport` (Flower in `server_app`): the coordinator hands it per-hospital
payloads and gets back replies, or an error line for a hospital that failed or did not answer in
`sites.round_timeout` seconds. Aggregation is `FederatedRound.aggregate`, the simulation's own
server step (with the config's robust rule and norm bound, `Safeguards.server_update`), over
the round's clients stacked in sampling order: a hospital that is missing or rejected gets
weight 0 and keeps its old state, exactly as a quarantined client in simulation.

Differential privacy follows the simulation's plan (`privacy_plan` over the hospitals' declared
training-set sizes, privacy.json, the same accountant and budget check), each mechanism at the
party that adds its noise. Example level: every train message carries the plan's z, Poisson
batch size and the run's public nonce, with the ledger blocks the node lacks (its genesis records
z); the hospital checks z against the genesis rules and clips and noises in its own worker with
its own secret (`Hospital.train`). Client level: clipping and noise run here, in
`FederatedRound.aggregate`, with the server's secret (`<workdir>/keys/server/dp_secret`).
Epsilon goes into every metrics record, ledger round block, summary.json and report.md.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Mapping, Protocol

import jax
import ml_collections
import numpy as np

from fedlora_jax import federated as F
from fedlora_jax import ledger as L
from fedlora_jax import models
from fedlora_jax.eval import fairness_summary
from fedlora_jax.privacy.spent import ledger_field
from fedlora_jax.run import report
from fedlora_jax.run.checkpoint import Checkpointer
from fedlora_jax.run.dp_keys import DpKeys
from fedlora_jax.run.gates import base_digest, base_tensors, ledger_rules
from fedlora_jax.run.hooks import PERSONALISED
from fedlora_jax.run.privacy_setup import open_privacy, privacy_meter, privacy_summary
from fedlora_jax.run.setup import expand, load_model, lora_config
from fedlora_jax.run.workdir import MetricsLog, check_workdir, write_config
from fedlora_jax.sites import codec, job, submissions
from fedlora_jax.sites.hospital import LEDGER_MESSAGE
from fedlora_jax.sites.submissions import Reply, missing_reason

Admit = Callable[[Reply], "str | None"]


class Transport(Protocol):
  def discover(self, payload: Reply, expected: int, timeout: float, admit: Admit
               ) -> dict[str, Reply]:
    """Waits for `expected` nodes, sends each the query `payload`; {hospital: its reply
    (`Hospital.describe()`, plus `node_id`)} of the nodes that answered and that `admit`
    (None: admitted, else the reason) lets take the hospital's place; the others get no
    message."""

  def rejoin(self, payload: Reply, timeout: float, admit: Admit) -> dict[str, Reply]:
    """Like `discover`, for nodes that connected since (restarted ones), without waiting."""

  def send(self, kind: str, payloads: Mapping[str, Reply], timeout: float
           ) -> dict[str, Reply | str]:
    """{hospital: reply, or a one-line error} for `kind` in {"train", "evaluate",
    `LEDGER_MESSAGE`}."""


class Coordinator:
  """Runs (or resumes) the job `cfg` over the hospitals of the registry."""

  def __init__(self, cfg: ml_collections.ConfigDict):
    job.check_job(cfg)
    self.cfg = cfg
    self.workdir = expand(cfg.workdir)
    self.ckpt_dir = os.path.join(self.workdir, "checkpoints")
    has_ckpt = os.path.isdir(self.ckpt_dir) and any(n.isdigit() for n in os.listdir(self.ckpt_dir))
    check_workdir(self.workdir, cfg, has_checkpoint=has_ckpt, resume=cfg.resume)
    if not cfg.ledger.registry:
      raise ValueError("the sites mode needs ledger.registry (the hospitals' enrolment records)")
    self.registry = L.load_registry(expand(cfg.ledger.registry), cfg.ledger.backend)
    self.names = [r.name for r in self.registry]  # client id = position in the registry
    self.keys = {r.name: r.pk.hex() for r in self.registry}  # what each hospital's node reports
    self.refused: list[Reply] = []  # node claims refused since the last metrics record
    self.ids = {r.name: r.id for r in self.registry}  # the ledger's client ids
    self.model, _, self.base_dir = load_model(cfg)
    write_config(self.workdir, cfg)
    self.graphdef, self.base, lora = models.split_lora(self.model)
    self.algorithm = job.algorithm(cfg)
    self.per_round = F.clients_per_round(len(self.names), count=cfg.fed.clients_per_round or None)
    resuming = has_ckpt and cfg.resume
    # the simulation's plan over the sizes the hospitals declared at enrolment (the genesis
    # records them): safeguards, z, the Poisson batch shape, the accountant; privacy.json
    self.plan, self.run_nonce = open_privacy(
        cfg, self.workdir, self.names, [r.num_samples for r in self.registry], self.per_round,
        resuming=resuming)
    self.state = F.init_state(self.algorithm, lora, len(self.names), cfg.seed,
                              self.plan.safeguards)
    self.ckpt = Checkpointer(self.ckpt_dir, every=cfg.checkpoint.every, keep=cfg.checkpoint.keep)
    # FedEx-LoRA folds residuals into the base: it is checkpointed, sent to the nodes as the
    # changed weights, and bound by the ledger's residual digest
    self.original = ({k: np.array(v) for k, v in base_tensors(self.base).items()}  # a copy:
                     if self.algorithm.updates_base else None)  # aggregate donates the base
    genesis_base = base_digest(self.base)  # the base as loaded, before any resumed change
    self.start = 0
    if has_ckpt and cfg.resume:
      restored, meta = self.ckpt.restore(self.ckpt.latest_round(), self._trees())
      self.state, self.start = restored["state"], int(meta["round"])
      self.base = restored.get("base", self.base)
      logging.info("resumed %s at round %d", self.workdir, self.start)
    self.meter = privacy_meter(cfg, self.plan, self.names, self.start, self._participants)
    # the server's own DP secret (client level); it holds no hospital's
    self.dp_keys = DpKeys.open(cfg, self.workdir, self.names, [], run_nonce=self.run_nonce,
                               resuming=resuming)
    # the rules of the simulation: robust rule, DP unit / delta / z, round size, base
    rules = ledger_rules(cfg, self.plan.noise_multiplier, self.per_round, genesis_base)
    self.ledger = L.LedgerServer.open_or_create(
        os.path.join(self.workdir, "ledger.jsonl"), expand(cfg.sites.server_keystore),
        self.registry, label="fedlora-jax-sites",  # the genesis adds a fresh random nonce
        rules=rules, max_samples_per_client=cfg.ledger.max_samples_per_client,
        backend=cfg.ledger.backend)
    self.replica_sizes: dict[str, int] = {}  # blocks each node's replica holds, as it said
    self.metrics = MetricsLog(os.path.join(self.workdir, "metrics.jsonl"),
                              keep_until_round=self.start if self.start else -1)

  def _participants(self, r: int) -> np.ndarray:
    """[m] sorted client ids of round `r` (0-based), as the simulation samples them."""
    return F.sample_clients(len(self.names), self.per_round, seed=self.cfg.seed, round_idx=r)

  def _would_exceed_budget(self, r: int) -> bool:
    """Whether round `r` (0-based) would take a party past `privacy.target_epsilon`."""
    return self.meter is not None and self.meter.would_exceed(
        [self.names[c] for c in self._participants(r)])

  def _global_arrays(self) -> dict[str, np.ndarray]:
    return codec.lora_arrays(self.state["global_lora"])

  def _trees(self) -> dict[str, Any]:
    """What a checkpoint holds: the state, and the base when the algorithm changes it."""
    return {"state": self.state, **({"base": self.base} if self.original is not None else {})}

  def _base_arrays(self) -> dict[str, np.ndarray]:
    """The base weights that differ from the shared base every node loaded ({} for all but
    FedEx-LoRA); every message carries them."""
    return ({} if self.original is None
            else codec.base_changes(base_tensors(self.base), self.original))

  def _residual_digest(self) -> bytes | None:
    return None if self.original is None else L.residual_digest(base_tensors(self.base),
                                                                self.original)

  def run(self, transport: Transport, progress=logging.info) -> dict[str, Any]:
    cfg, n = self.cfg, len(self.names)
    first = self.start == 0  # the nodes evaluate the base before any training with the query
    nodes = transport.discover({"global": self._global_arrays(), "base": self._base_arrays(),
                                "task": {"evaluate": first}}, n, cfg.sites.round_timeout,
                                self.admit)
    self.info = {h: nodes[h] for h in self.names if h in nodes}
    if not self.info:
      raise RuntimeError("no registered hospital's node answered")
    max_targets = max(d["max_target_tokens"] for d in self.info.values())
    training = job.local_training(cfg, max_targets, cfg.fed.local_steps)
    # the robust rule, norm bound and DP-FedAvg run here, in the simulation's own server step
    engine = F.FederatedRound(self.graphdef, self.algorithm, training, n,
                              safeguards=self.plan.safeguards)
    # receipts per hospital, delivered with its next message; after a crash the receipts of the
    # checkpointed round are sent again (they may not have reached the nodes)
    self.receipts: dict[str, list[Reply]] = {}
    if self.start and self.ledger.recorded_block(self.start) is not None:
      self._queue_receipts(self.start)
    if first:
      record = {"round": 0, "clients": [], "loss": [], "valid": [], "weights": [], "ledger": {},
                **_accuracy_record(self.info), "seconds": 0.0, **self._refused()}
      self.metrics.append(record)
      progress(progress_line(record))
    last_accuracy = None
    for r in range(self.start, cfg.fed.rounds):
      if self._would_exceed_budget(r):  # as the simulation's loop: never started
        logging.warning("privacy budget would be exceeded by round %d: not starting it", r + 1)
        break
      # the last round the budget allows is evaluated and checkpointed as the last one
      last = r + 1 == cfg.fed.rounds or self._would_exceed_budget(r + 1)
      record = self._round(transport, engine, r, max_targets, last)
      last_accuracy = record.get("accuracy", last_accuracy)
      self.ckpt.save(r + 1, self._trees(), {"round": r + 1,
                     "ledger_head": self.ledger.head_hash}, force=last)
      self.metrics.append(record)
      progress(progress_line(record))
    self.ckpt.close()
    self._close(transport)
    if last_accuracy is None:  # resumed after the last round
      last_accuracy = self._evaluate(transport, cfg.fed.rounds)["accuracy"]
    return self._finish(last_accuracy)

  def _round(self, transport: Transport, engine: F.FederatedRound, r: int, max_targets: int,
             last: bool) -> dict[str, Any]:
    """Runs round `r` (0-based) with the nodes; returns its metrics record."""
    round_no, t0 = r + 1, time.time()
    ids = self._participants(r)
    self._rejoin(transport)
    replies = self._send(transport, "train", self._train_payloads(ids, round_no, max_targets))
    t_train = time.time() - t0
    subs = submissions.collect([self.names[c] for c in ids], replies, self.state["global_lora"])
    for h, rep in subs.answered.items():
      self.replica_sizes[h] = int(rep.get("replica_size", 0))
    admission, accept, counts = self._admit(round_no, ids, subs)
    m, privacy = self._aggregate(engine, r, ids, subs, accept, counts)
    block = self._record(round_no, admission, subs, privacy)
    evaluate = last or round_no % self.cfg.eval.every == 0
    t_after = time.time()
    refused, accuracy, after_workers = self._cosign_and_evaluate(
        transport, round_no if evaluate else None)
    t_after = time.time() - t_after
    record = {**self._metrics_record(round_no, ids, subs, m, block, refused, privacy), **accuracy}
    # each hospital's own time on its messages (its worker's, when the transport reports it):
    # a message round's time minus its slowest hospital's is the network's
    record["timing"] = {"train_s": round(t_train, 3), "round_s": round(time.time() - t0, 3),
                        "worker_s": _worker_seconds(subs.answered),
                        "after_round_s": round(t_after, 3), "after_round_worker_s": after_workers}
    record["seconds"] = record["timing"]["round_s"]
    return record

  def _rejoin(self, transport: Transport) -> None:
    """Takes in the nodes that connected since the last round (restarted ones)."""
    joined = transport.rejoin({"task": {"evaluate": False}},
                              min(self.cfg.sites.round_timeout, 60.0), self.admit)
    self.info.update({h: info for h, info in joined.items() if h in self.names})

  def _train_payloads(self, ids: np.ndarray, round_no: int, max_targets: int
                      ) -> dict[str, Reply]:
    """The train message to each sampled hospital whose node is known."""
    context = self.ledger.round_context(round_no).to_dict()
    global_arrays, base_arrays = self._global_arrays(), self._base_arrays()
    server_arrays = codec.tree_arrays(
        self.plan.safeguards.algorithm_server_state(self.state["server_state"]))
    return {self.names[c]: {
        "global": global_arrays, "server_state": server_arrays, "base": base_arrays,
        "task": {"round": round_no, "client_id": int(c), "max_target_tokens": max_targets,
                 "context": context, **self._example_dp_task(self.names[c])}}
        for c in ids if self.names[c] in self.info}

  def _admit(self, round_no: int, ids: np.ndarray, subs: submissions.Submissions
             ) -> tuple[L.Admission, np.ndarray, np.ndarray]:
    """(the ledger's admission, [C] accept, [C] signed counts in sampling order): verified, or
    replayed from the round's block when it was written before a crash."""
    admission = self.ledger.verify_or_replay(round_no, [(att, d) for _, att, d in subs.signed])
    signed = {h: int(n) for (h, _, _), ok, n in zip(subs.signed, admission.accept,
                                                   admission.num_samples) if ok}
    accept = np.asarray([self.names[c] in signed for c in ids])
    counts = np.asarray([signed.get(self.names[c], 0) for c in ids], np.float32)
    return admission, accept, counts

  def _aggregate(self, engine: F.FederatedRound, r: int, ids: np.ndarray,
                 subs: submissions.Submissions, accept: np.ndarray, counts: np.ndarray
                 ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The simulation's server step on the round's stacked updates, in place; (its metrics, the
    privacy spent so far or None)."""
    trained = self._stack(ids, subs)
    clip = self.meter and self.meter.clip_in_use(self.state["server_state"])
    self.state, self.base, m = engine.aggregate(self.state, self.base, trained, ids, counts,
                                                accept, self.dp_keys.server_noise_key(r))
    # every sampled hospital is counted, as in the simulation (one that did not answer too)
    privacy = self.meter and self.meter.after_round([self.names[c] for c in ids], clip)
    return m, privacy

  def _record(self, round_no: int, admission: L.Admission, subs: submissions.Submissions,
              privacy: dict[str, Any] | None) -> dict[str, Any]:
    """The round's block (written now, or the one a replayed round recomputed exactly), with
    its receipts queued for the hospitals."""
    block = self.ledger.record_or_check(
        round_no, admission, L.tree_digest(self._global_arrays()), self.algorithm.name,
        self._residual_digest(),
        missing=[(self.ids[h], missing_reason(e)) for h, e in subs.missing.items()],
        privacy=ledger_field(privacy))
    for (h, _, _), receipt in zip(subs.signed, admission.receipts):
      self.receipts.setdefault(h, []).append(receipt.to_dict())
    if admission.recorded is not None:  # replayed: its receipts again
      self._queue_receipts(round_no)
    return block

  def _metrics_record(self, round_no: int, ids: np.ndarray, subs: submissions.Submissions,
                      m: Mapping[str, Any], block: Mapping[str, Any], refused: dict[str, str],
                      privacy: dict[str, Any] | None) -> dict[str, Any]:
    """The round's metrics record, before evaluation and timing."""
    return {
        "round": round_no, "clients": [self.names[c] for c in ids],
        "loss": self._losses(ids, subs.answered),
        "valid": np.asarray(m["valid"]).tolist(), "weights": np.asarray(m["weights"]).tolist(),
        "ledger": {**L.round_outcome(block),
                   "missing": {h: str(e) for h, e in subs.missing.items()}, "refused": refused},
        # array bytes per hospital: received = the round's message to it, sent = its reply
        "bytes": {h: {"received": int(rep["bytes_received"]), "sent": int(rep["reply_bytes"])}
                  for h, rep in subs.answered.items()}, **self._refused(),
        **({"privacy": privacy} if privacy else {})}

  def _example_dp_task(self, h: str) -> dict[str, Any]:
    """What a train message adds for DP-SGD ({} otherwise): the plan the hospital runs (z, the
    Poisson batches' fixed rows, the run's public nonce its secret keys bind) and the ledger
    blocks its replica lacks (the genesis records z: the hospital refuses another one)."""
    if self.cfg.privacy.level != "example":
      return {}
    return {"blocks": self._blocks_for(h),
            "example_dp": {"noise_multiplier": self.plan.noise_multiplier,
                           "max_batch_size": self.plan.max_batch_size,
                           "run_nonce": self.run_nonce}}

  def _losses(self, ids, answered: Mapping[str, Reply]) -> list[float | None]:
    """The record's losses: each hospital's mean (None: no reply), or with DP on only their
    mean, as the simulation writes (a hospital under DP-SGD reports none: its raw losses are no
    DP release)."""
    losses = [float(np.mean(answered[self.names[c]]["loss"]))
              if self.names[c] in answered and answered[self.names[c]]["loss"] else None
              for c in ids]
    if self.meter is None:
      return losses
    known = [x for x in losses if x is not None]
    return [round(float(np.mean(known)), 5)] if known else []

  def _stack(self, ids, subs: submissions.Submissions):
    """(local_c, new client states, losses [C, K]) of the round in sampling order; a hospital
    without a usable reply contributes the global adapter and its old state (weight 0)."""
    g, k = self.state["global_lora"], self.cfg.fed.local_steps
    like = jax.tree.map(lambda x: x[0], self.state["client_states"])
    locals_, olds, news, losses = [], [], [], []
    for c in ids:
      h = self.names[c]
      old = jax.tree.map(lambda x: x[c], self.state["client_states"])
      if h in subs.updates:
        rep = subs.answered[h]
        old = codec.tree_from_arrays(rep["client_state_old"], like, f"{h} client state")
        locals_.append(subs.updates[h])
        news.append(codec.tree_from_arrays(rep["client_state_new"], like, f"{h} client state"))
        # DP-SGD: the hospital reports no loss (zeros: only finiteness is used here)
        losses.append(np.asarray(rep["loss"] or np.zeros(k), np.float32).reshape(k))
      else:
        locals_.append(g)
        news.append(old)
        losses.append(np.zeros(k, np.float32))
      olds.append(old)
    stack = lambda trees: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
    # The node's state as it was before this round (the server keeps no copy of its own).
    old_c = stack(olds)
    if jax.tree.leaves(old_c):
      self.state["client_states"] = jax.tree.map(lambda a, o: a.at[np.asarray(ids)].set(o),
                                                 self.state["client_states"], old_c)
    return stack(locals_), stack(news), np.stack(losses)

  def admit(self, info: Mapping[str, Any]) -> str | None:
    """Why a node's claim to be a hospital is refused (None: admitted). The key it reports must
    be the hospital's registered key (in the registry the genesis block records), so an
    impostor cannot take a hospital's place or its receipts, and a node re-joining after a
    restart must present the same key. A refusal is logged and recorded in the next metrics
    record (`refused_nodes`)."""
    name = info.get("hospital")
    if name not in self.keys:
      reason = f"claims {name!r}, not a registered hospital"
    elif info.get("public_key") != self.keys[name]:
      reason = f"reports a key that is not {name}'s registered key"
    else:
      return None
    logging.warning("node %s refused: %s", info.get("node_id"), reason)
    self.refused.append({"node_id": info.get("node_id"), "hospital": str(name),
                         "reason": reason})
    return reason

  def _refused(self) -> dict[str, Any]:
    """{"refused_nodes": [...]} of the claims refused since the last record ({} if none)."""
    refused, self.refused = self.refused, []
    return {"refused_nodes": refused} if refused else {}

  def _send(self, transport: Transport, kind: str, payloads: Mapping[str, Reply]
            ) -> dict[str, Reply | str]:
    """Sends with each hospital's pending receipts; they are dropped once its node replied."""
    payloads = {h: {**p, "task": {**p["task"], "receipts": self.receipts.get(h, [])}}
                for h, p in payloads.items()}
    replies = transport.send(kind, payloads, self.cfg.sites.round_timeout)
    for h, rep in replies.items():
      if isinstance(rep, dict):
        self.receipts.pop(h, None)
        if rep.get("unsettled_receipts"):
          logging.warning("%s could not settle %d receipt(s)", h, rep["unsettled_receipts"])
    return replies

  def _blocks_for(self, h: str) -> list[dict[str, Any]]:
    return self.ledger.blocks_since(self.replica_sizes.get(h, 0))

  def _cosign_and_evaluate(self, transport: Transport, evaluate_round: int | None
                          ) -> tuple[dict[str, str], dict[str, Any], dict[str, float]]:
    """One ledger message per hospital after the round: the newest block (and those the node's
    replica lacks, the new global adapter and the round's receipts) to the round's participants,
    whose co-signatures go into the next block; at an evaluation round every node also scores
    the new global adapter on its own test set (one message round instead of two). Raises
    LedgerError when a majority refuses. Returns ({hospital: reason} of co-sign refusals, the
    accuracy record ({} when not evaluating), each hospital's time in its worker)."""
    head = self.ledger.ledger.blocks[-1]
    due = self.ledger.ledger.cosignature_due
    cosigners = {p["name"] for p in head["participants"] if p["name"] in self.info} if due else set()
    targets = self.info if evaluate_round is not None else cosigners
    if not targets:
      return {}, {}, {}
    global_arrays, base_arrays = self._global_arrays(), self._base_arrays()
    evaluate = {} if evaluate_round is None else {"evaluate": True, "round": evaluate_round}
    payloads = {h: {"global": global_arrays, "base": base_arrays,
                    "task": {"cosign": h in cosigners, "blocks": self._blocks_for(h), **evaluate}}
                for h in targets}
    replies = self._send(transport, LEDGER_MESSAGE, payloads)
    answers = []
    for h, rep in replies.items():
      answer = rep.get("cosign") if isinstance(rep, dict) else None
      if isinstance(rep, dict):
        self.replica_sizes[h] = int(rep.get("replica_size", 0))
      if h not in cosigners or not isinstance(answer, dict):
        continue
      try:
        signature = answer["signature"] and bytes.fromhex(answer["signature"])
        answers.append(L.CoSign(self.ids[h], str(answer["block_hash"]), signature,
                                str(answer["reason"])[:300]))
      except (KeyError, TypeError, ValueError):
        continue  # a malformed answer counts as none
    refused = {}
    if due:
      cosig = self.ledger.add_cosignatures(answers)
      names = {cid: h for h, cid in self.ids.items()}
      refused = {names[r["client_id"]]: r["reason"] for r in cosig["refused"]}
    accuracy = ({} if evaluate_round is None
                else _accuracy_record({h: replies.get(h) for h in self.info}))
    return refused, accuracy, _worker_seconds(replies)

  def _close(self, transport: Transport) -> None:
    """The closing block (the last round's co-signature), then every node receives the blocks
    its replica lacks."""
    if not self.ledger.ledger.closed:
      self.ledger.ledger.close()
    payloads = {h: {"base": self._base_arrays(),
                    "task": {"cosign": False, "blocks": self._blocks_for(h)}} for h in self.info}
    for h, rep in self._send(transport, LEDGER_MESSAGE, payloads).items():
      if isinstance(rep, dict):
        self.replica_sizes[h] = int(rep.get("replica_size", 0))
      else:
        logging.warning("%s did not receive the closing block: %s", h, rep)

  def _queue_receipts(self, round_no: int) -> None:
    """Re-issues the receipts the ledger's block of `round_no` implies, for registered ids."""
    names = {cid: h for h, cid in self.ids.items()}
    for receipt in self.ledger.ledger.receipts_of(round_no):
      if receipt.client_id in names:
        self.receipts.setdefault(names[receipt.client_id], []).append(receipt.to_dict())

  def _evaluate(self, transport: Transport, round_no: int) -> dict[str, Any]:
    """Sends the new global adapter; every node evaluates on its own test set (its personal
    model for FedSA-LoRA); only accuracies come back."""
    global_arrays = self._global_arrays()
    payloads = {h: {"global": global_arrays, "base": self._base_arrays(),
                    "task": {"round": round_no, "evaluate": True}} for h in self.info}
    replies = self._send(transport, "evaluate", payloads)
    return _accuracy_record({h: replies.get(h) for h in self.info})

  def _finish(self, accuracy: Mapping[str, float]) -> dict[str, Any]:
    cfg, workdir = self.cfg, self.workdir
    global_lora = jax.device_get(self.state["global_lora"])
    adapted = models.merge(self.graphdef, self.base, global_lora)
    adapter_file = models.export_peft_adapter(global_lora, adapted, lora_config(cfg),
                                              os.path.join(workdir, "adapter"),
                                              base_model_name_or_path=self.base_dir)
    if self.original is not None:  # FedEx-LoRA folded residuals into the base: ship it too
      models.save_hf_checkpoint(adapted, os.path.join(workdir, "base_with_residuals"))
    privacy = privacy_summary(cfg, self.plan)
    names = [h for h in self.names if h in accuracy]
    own = np.asarray([accuracy[h] for h in names])
    answered = ~np.isnan(own)
    sizes = np.asarray([self.info[h]["test"] for h in names], np.float64)
    personal = self.algorithm.name in PERSONALISED
    overall = float(own[answered] @ sizes[answered] / sizes[answered].sum())
    matrix = (np.where(np.eye(len(names), dtype=bool), own[None], np.nan) if personal
              else own[None])
    summary: dict[str, Any] = {
        "algorithm": self.algorithm.name, "centralized": False, "rounds": cfg.fed.rounds,
        "mode": "sites",
        "clients": [{"client": h, **{k: self.info[h][k] for k in
                                     ("train", "test", "dominant", "dominant_share")}}
                    for h in names],
        "accuracy": dict(zip(names, own.tolist())),
        "fairness": fairness_summary(own[answered].tolist()),
        # a global model's accuracy over all tests is the size-weighted mean of the hospitals'
        # own results; personal models are only tested at their own hospital
        "accuracy_all_tests": {h: (float("nan") if personal else overall) for h in names},
        "matrix": matrix.tolist(), "matrix_rows": names if personal else ["global"],
        "adapter": adapter_file, **({"privacy": privacy} if privacy else {}),
    }
    digest = L.adapter_file_digest(adapter_file)
    anchors = {k: self.ledger.info()[k] for k in ("server_public_key", "genesis_hash")}
    prov = L.find_provenance(self.ledger.path, digest, **anchors)
    check = L.verify_ledger(self.ledger.path, **anchors)
    summary["ledger"] = {"path": str(self.ledger.path), "valid": check.ok,
                         "blocks": check.num_blocks, "adapter_digest": digest.hex(),
                         "adapter_block": None if prov is None else prov.block_index,
                         **self.ledger.info()}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
    report.write_report(workdir, summary)
    return summary


def _worker_seconds(replies: Mapping[str, Any]) -> dict[str, float]:
  """{hospital: seconds its worker spent on its message} of the replies that report it."""
  return {h: rep["worker_s"] for h, rep in replies.items()
          if isinstance(rep, dict) and "worker_s" in rep}


def _accuracy_record(replies: Mapping[str, Any]) -> dict[str, Any]:
  """Accuracy per hospital (NaN for one that did not answer) and the fairness summary of the
  hospitals that did."""
  acc = {h: float(r["accuracy"]) if isinstance(r, dict) else float("nan")
         for h, r in replies.items()}
  return {"accuracy": acc,
          "summary": fairness_summary([a for a in acc.values() if not np.isnan(a)])}


def progress_line(record: Mapping[str, Any]) -> str:
  """The one progress line per round."""
  line = f"round {record['round']:3d}"
  losses = [x for x in record["loss"] if x is not None]
  if losses:
    line += f" | loss {np.mean(losses):.4f}"
  if "summary" in record:
    s = record["summary"]
    line += f" | acc mean {s['mean']:.3f} worst {s['min']:.3f}"
  lg = record["ledger"]
  if lg:
    line += f" | block {lg['block']}: {lg['accepted']} accepted"
    if lg["rejected"]:
      line += f", rejected {lg['rejected']}"
    if lg["missing"]:
      line += f", missing {sorted(lg['missing'])}"
  return f"{line} | {record['seconds']:.1f} s"
