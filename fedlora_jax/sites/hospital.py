"""One hospital's side of a sites round: its data, its key, its client state, the local update.

`Hospital.train` runs the simulation's own `FederatedRound.client_train` (jitted, for this one
client) on the batches `data.round_batches` draws for this client id and round with the job's
seed, with the dropout key of the simulation (round r, client i: fold_in(fold_in(rng, r), i),
see `federated.round`). Client state (SCAFFOLD's c_i, FedSA-LoRA's B) stays here: it is written
to `state-dir/client_state/<job id>` as pending after training and committed only when the
server's receipt says the update was accepted (the simulation keeps a rejected client's old
state too), so it survives a restart of the node. The attestation signs the update and the
client state the reply carries (`codec.submission_digest`).

Under example-level DP (`privacy.level="example"`) the local steps are the simulation's DP-SGD
on Poisson batches, with this hospital's own secret noise and sampling keys (`hospital_dp`):
the plan comes from the server, checked against the ledger's genesis rules, and the reply
carries no training loss (a raw loss is no DP release).

After the server records a round's block it sends it to the round's participants
(`LEDGER_MESSAGE`, with the blocks this node's replica lacks and the new global adapter): the
node checks the block against what it sent and receives and answers with its co-signature or its
reason to refuse (`HospitalSigner.cosign`); at an evaluation round the same message asks every
node to score the new global adapter on its own test set; after the last round every node
receives the closing block the same way.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from fedlora_jax import data as D
from fedlora_jax import ledger as L
from fedlora_jax import federated as F
from fedlora_jax import models
from fedlora_jax.federated.placement import ClientPlacement
from fedlora_jax.federated.safeguards import Safeguards
from fedlora_jax.privacy.dp_sgd import ExampleDP
from fedlora_jax.run.evaluation import Evaluator
from fedlora_jax.run.hooks import PERSONALISED
from fedlora_jax.run.setup import load_model, lora_config
from fedlora_jax.sites import codec, job
from fedlora_jax.sites.hospital_dp import HospitalDp, PlanRefused
from fedlora_jax.sites.node_config import NodeConfig, read_records

PyTree = Any
LEDGER_MESSAGE = "query.ledger"  # the Flower message type of the ledger's blocks
_COMMITTED = re.compile(r"committed_(\d+)\.npz")


class Hospital:
  """The node's engine for one job config (built once per process)."""

  def __init__(self, node: NodeConfig, cfg: ml_collections.ConfigDict):
    job.check_job(cfg)
    self.node, self.cfg = node, cfg
    local = ml_collections.ConfigDict(cfg.to_dict())
    local.model.hf_path = node.base_model  # the base this hospital was given
    model, tokenizer, _ = load_model(local)
    self.graphdef, self.shared_base, self.lora_like = models.split_lora(model)
    self.base = self.shared_base  # plus the server's changes (FedEx-LoRA), set per message
    test = D.tokenize_mcq(tokenizer, read_records(node.test_file), cfg.data.max_len)
    if cfg.eval.max_test_per_client:
      test = test.take(np.arange(min(len(test), cfg.eval.max_test_per_client)))
    self.train_records = read_records(node.train_file)
    self.train_data = D.tokenize_mcq(tokenizer, self.train_records, cfg.data.max_len)
    self.test_data = test
    self.algorithm = job.algorithm(cfg)
    self.signer = L.HospitalSigner(node.hospital, node.keystore, self.receipts_dir(node, cfg),
                                   node.server_public_key, cfg.ledger.backend)
    self.evaluator = Evaluator(self.graphdef, {0: test}, ClientPlacement.create(1, None), None,
                               batch_size=cfg.eval.batch_size, group_size=cfg.eval.group_size)
    self._jitted: dict[tuple[int, ExampleDP | None], Any] = {}
    # one directory per job: a worker serves jobs one after another
    self.state_dir = os.path.join(node.state_dir, "client_state", job.job_id(cfg))
    os.makedirs(self.state_dir, exist_ok=True)
    self.dp = HospitalDp(node.keystore, node.state_dir, cfg, node.server_public_key,
                         len(self.train_data), node.max_epsilon, node.dp_delta)
    self.base_changes: Mapping[str, np.ndarray] = {}  # the server's, with the current message

  @staticmethod
  def receipts_dir(node: NodeConfig, cfg) -> str:
    """Where the node keeps this job's receipts, the attestations it issued and its replica of
    the job's ledger (one directory per job: a worker serves jobs one after another)."""
    return os.path.join(node.state_dir, "receipts", job.job_id(cfg))

  def describe(self) -> dict[str, Any]:
    """What the server learns at the start: name, key, set sizes, longest answer span."""
    label, share = D.dominant_chapter_share(self.train_records)
    return {"hospital": self.node.hospital, "public_key": self.signer.public_key.hex(),
            "train": len(self.train_data), "test": len(self.test_data), "dominant": label,
            "dominant_share": round(float(share), 3),
            "max_target_tokens": int(self.train_data.loss_mask.sum(axis=1).max())}

  # --- training --------------------------------------------------------------------------------
  def _train_fn(self, max_target_tokens: int, example_dp: ExampleDP | None):
    if (max_target_tokens, example_dp) not in self._jitted:
      training = job.local_training(self.cfg, max_target_tokens, self.cfg.fed.local_steps)
      engine = F.FederatedRound(self.graphdef, self.algorithm, training, num_clients=1,
                                safeguards=Safeguards(example_dp=example_dp))
      self._jitted[max_target_tokens, example_dp] = jax.jit(engine.client_train)
    return self._jitted[max_target_tokens, example_dp]

  def _dp_batches(self, round_no: int, client_id: int, plan: Mapping[str, Any],
                  blocks: list[dict[str, Any]], context: Mapping[str, Any], inputs: str):
    """DP-SGD: (ExampleDP, Poisson batches and counts, secret noise key uint32 [2]) of the
    round, once the plan is checked against the genesis (`blocks` extend the replica) and the
    release is noted (`HospitalDp`)."""
    self.signer.receive(blocks)
    example_dp = self.dp.check_plan(plan, self.signer.replica.state, context["ledger_id"])
    keys = self.dp.keys(client_id, plan["run_nonce"])  # before this release is noted
    self.dp.check_release(plan["run_nonce"], round_no, context["ledger_id"], inputs, example_dp,
                          int(plan["max_batch_size"]))
    batches, counts = D.poisson_round_batches(
        {client_id: self.train_data}, local_steps=self.cfg.fed.local_steps,
        expected_batch_size=self.cfg.fed.batch_size, max_batch_size=int(plan["max_batch_size"]),
        rngs=keys.sampling_rngs([client_id], round_no - 1), client_ids=[client_id])
    return example_dp, batches, counts, keys.noise_key(client_id, round_no - 1)

  def train(self, round_no: int, client_id: int, max_target_tokens: int,
            global_arrays: Mapping[str, np.ndarray], server_arrays: Mapping[str, np.ndarray],
            context: Mapping[str, Any], example_dp: Mapping[str, Any] | None = None,
            blocks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Local update for round `round_no` (1-based) as client `client_id` of the federation;
    `example_dp`: the server's DP-SGD plan (z, max batch rows, run nonce) with `blocks`, the
    ledger blocks this node's replica lacks.

    Returns the reply: update (PEFT arrays), old and new client state arrays, attestation,
    per-step losses (none under DP-SGD) and the signed sample count.
    """
    cfg = self.cfg
    if example_dp is None and self.dp.max_epsilon is not None:
      raise PlanRefused(f"this hospital releases only DP-SGD updates (its max-epsilon "
                        f"{self.dp.max_epsilon:g}); a train message without a DP-SGD plan "
                        f"(privacy.level={cfg.privacy.level!r}) is refused")
    global_lora = codec.lora_from_arrays(global_arrays, self.lora_like)
    server_like = self.algorithm.init_server_state(global_lora)
    server_state = codec.tree_from_arrays(server_arrays, server_like, "server state")
    old_state = self.client_state(round_no, global_lora)
    if (example_dp is None) != (cfg.privacy.level != "example"):
      raise PlanRefused(f"privacy.level={cfg.privacy.level!r}: a train message "
                        f"{'without' if example_dp is None else 'with'} a DP-SGD plan is refused")
    if example_dp is None:
      dp, noise_key = None, None
      batches, counts = D.round_batches({client_id: self.train_data},
                                        local_steps=cfg.fed.local_steps,
                                        batch_size=cfg.fed.batch_size, seed=cfg.seed,
                                        round_idx=round_no - 1, client_ids=[client_id])
    else:
      inputs = L.tree_digest({"global": dict(global_arrays), "server": dict(server_arrays),
                              "client_state": codec.tree_arrays(old_state),
                              "base": dict(self.base_changes)}).hex()
      dp, batches, counts, noise_key = self._dp_batches(round_no, client_id, example_dp,
                                                        blocks or [], context, inputs)
    batches_k = {k: v[0] for k, v in batches.items()}
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), round_no - 1),
                             client_id)
    local, new_state, losses = self._train_fn(max_target_tokens, dp)(
        self.base, global_lora, server_state, old_state, batches_k, key, noise_key)
    update = codec.lora_arrays(local)
    new_arrays = codec.tree_arrays(new_state)
    np.savez(self._path("pending", round_no), **new_arrays)
    old_arrays = codec.tree_arrays(old_state)
    attestation = self.signer.attest(L.RoundContext.from_dict(context), codec.submission_digest(
        update, old_arrays, new_arrays), int(counts[0])).to_dict()
    return {"update": update, "client_state_old": old_arrays,
            "client_state_new": new_arrays, "attestation": attestation,
            "loss": [] if dp else np.asarray(losses).tolist(), "num_samples": int(counts[0]),
            "replica_size": len(self.signer.replica)}

  def ledger_blocks(self, task: Mapping[str, Any],
                    global_arrays: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
    """The hospital's side of the ledger's blocks: extends its replica by `task["blocks"]`;
    when `task["cosign"]` (it took part in the newest round) checks that block against the
    attestation it signed and `global_arrays`, the new global adapter it receives, and answers
    with its co-signature or its reason to refuse."""
    if not task["cosign"]:
      self.signer.receive(task["blocks"])
      return {"replica_size": len(self.signer.replica)}
    answer = self.signer.cosign(task["blocks"], L.tree_digest(dict(global_arrays or {})))
    return {"cosign": {**answer._asdict(),
                       "signature": answer.signature and answer.signature.hex()},
            "replica_size": len(self.signer.replica)}

  # --- client state ----------------------------------------------------------------------------
  def _path(self, kind: str, round_no: int) -> str:
    return os.path.join(self.state_dir, f"{kind}_{round_no:06d}.npz")

  def client_state(self, round_no: int, global_lora: PyTree) -> PyTree:
    """The state committed by the latest round before `round_no` (initial state if none)."""
    like = self.algorithm.init_client_state(global_lora)
    done = [int(m[1]) for m in map(_COMMITTED.fullmatch, os.listdir(self.state_dir))
            if m and int(m[1]) < round_no]
    if not done or not jax.tree.leaves(like):
      return like
    path = self._path("committed", max(done))
    with np.load(path) as z:
      return codec.tree_from_arrays(dict(z), like, f"client state {path}")

  def settle(self, receipt: Mapping[str, Any]) -> bool:
    """Checks the server's receipt for this node's submission (`HospitalSigner.accept_receipt`,
    which stores it); commits the pending state when accepted (drops it otherwise). False when
    the receipt is malformed, not signed by the pinned server key, or not for this node."""
    try:
      answer = L.Receipt.from_dict(receipt)
      self.signer.accept_receipt(answer)
    except L.LedgerError:
      return False
    pending = self._path("pending", answer.round)
    if os.path.exists(pending):
      if answer.verdict == L.ACCEPTED:
        os.replace(pending, self._path("committed", answer.round))
      else:
        os.remove(pending)
    return True

  # --- messages --------------------------------------------------------------------------------
  def handle(self, kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Answers one decoded message: "query" (describe, and evaluate the first global when
    asked), "train", "evaluate" or `LEDGER_MESSAGE` (blocks to keep, co-sign, and evaluate
    when asked). Receipts for this node's submissions ride on the next message it gets and are
    settled first; base weights the server changed (FedEx-LoRA's folded residuals) come with
    every message and replace the shared base's. Returns the reply payload (array dicts +
    "result")."""
    task = payload["task"]
    self.base_changes = payload.get("base") or {}
    self.base = (codec.with_base_changes(self.shared_base, self.base_changes)
                 if self.base_changes else self.shared_base)
    # A receipt this node cannot settle (not signed by the pinned server key, or answering no
    # attestation of its own) is not stored; it is counted in the reply and never blocks the
    # messages that follow.
    unsettled = sum(not self.settle(receipt) for receipt in task.get("receipts", []))
    if kind == "query":
      info = self.describe()
      if task["evaluate"]:
        info.update(self.evaluate(0, payload["global"]))
      return {"result": {**info, "unsettled_receipts": unsettled}}
    if kind == "evaluate":
      return {"result": {**self.evaluate(int(task["round"]), payload["global"]),
                         "unsettled_receipts": unsettled}}
    if kind == LEDGER_MESSAGE:  # after a round: blocks, co-signature, and evaluation if asked
      result = self.ledger_blocks(task, payload.get("global"))
      if task.get("evaluate"):
        result.update(self.evaluate(int(task["round"]), payload["global"]))
      return {"result": {**result, "unsettled_receipts": unsettled}}
    if kind == "train":
      reply = self.train(int(task["round"]), int(task["client_id"]),
                         int(task["max_target_tokens"]), payload["global"],
                         payload["server_state"], task["context"], task.get("example_dp"),
                         task.get("blocks"))
      arrays = {k: reply.pop(k) for k in ("update", "client_state_old", "client_state_new")}
      return {**arrays, "result": {**reply, "unsettled_receipts": unsettled}}
    raise ValueError(f"unknown message type {kind!r}")

  # --- evaluation ------------------------------------------------------------------------------
  def evaluate(self, round_no: int, global_arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Accuracy of this hospital's model (personal for FedSA-LoRA / local) on its own test set.
    After the last round a personal model is also exported (`personal_adapter_dir`)."""
    global_lora = codec.lora_from_arrays(global_arrays, self.lora_like)
    lora = self.algorithm.personal_lora(global_lora, self.client_state(round_no + 1, global_lora))
    acc = self.evaluator.accuracy(self.base, jax.tree.map(lambda x: x[None], lora), [(0, 0)])
    if round_no == self.cfg.fed.rounds and self.algorithm.name in PERSONALISED:
      models.export_peft_adapter(jax.device_get(lora), models.merge(self.graphdef, self.base, lora),
                                 lora_config(self.cfg), self.personal_adapter_dir(self.node),
                                 base_model_name_or_path=self.node.base_model)
    return {"accuracy": float(acc[0, 0]), "test": len(self.test_data)}

  @staticmethod
  def personal_adapter_dir(node: NodeConfig) -> str:
    """Where the node writes its personal adapter (PEFT format, as `scripts/train.py` exports)."""
    return os.path.join(node.state_dir, "adapter")
