"""The round loop: sample, batch where the data lives, train, gate, aggregate, then the hooks."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fedlora_jax import federated as F
from fedlora_jax.data import poisson_round_batches, round_batches
from fedlora_jax.data.batching import BATCH_KEYS
from fedlora_jax.federated.placement import ClientPlacement
from fedlora_jax.federated.round import PAD
from fedlora_jax.privacy.spent import PrivacyMeter, ledger_field
from fedlora_jax.run import multihost
from fedlora_jax.run.dp_keys import DpKeys
from fedlora_jax.run.gates import Gate
from fedlora_jax.run.hooks import Hook, Job
from fedlora_jax.run.setup import ClientData


POISSON_STREAM = 0x504F  # the seeded Poisson client sample of a run without DP


class RoundRunner:
  """One federated round over the mesh, each process feeding only its own clients' batches."""

  def __init__(self, engine: F.FederatedRound, placement: ClientPlacement, data: ClientData, *,
               clients_per_round: int, local_steps: int, batch_size: int, seed: int,
               max_batch_size: int | None = None, privacy: PrivacyMeter | None = None,
               dp_keys: DpKeys | None = None, sampling_rate: float = 0.0,
               max_clients: int | None = None):
    self.engine = engine
    self.placement = placement
    self.data = data
    self.per_round = clients_per_round
    self.local_steps = local_steps
    self.batch_size = batch_size
    self.seed = seed
    self.max_batch_size = max_batch_size  # DP-SGD: Poisson batches of this fixed shape
    self.privacy = privacy  # DP: counts each round before its ledger block records the epsilon
    self.dp_keys = dp_keys or DpKeys()  # each party's secret DP randomness
    self.sampling_rate = sampling_rate  # Poisson client sampling's q (0: fixed m per round)
    self.max_clients = max_clients  # its fixed slots m_max
    held = [int(t.seq_len) for t in data.train.values()]
    self.seq_len = max(multihost.allgather_json(max(held, default=0)))  # once, at setup

  def _local_batches(self, client_ids: list[int], round_idx: int):
    if self.max_batch_size:
      return poisson_round_batches(
          self.data.train, local_steps=self.local_steps, expected_batch_size=self.batch_size,
          max_batch_size=self.max_batch_size,
          rngs=self.dp_keys.sampling_rngs(client_ids, round_idx), client_ids=client_ids)
    return round_batches(self.data.train, local_steps=self.local_steps,
                         batch_size=self.batch_size, seed=self.seed, round_idx=round_idx,
                         client_ids=client_ids)

  def batches(self, slot_ids: np.ndarray, round_idx: int) -> tuple[dict[str, Any], int]:
    """([S, K, B, L] batches, the round's real tokens over every process); this process builds
    the rows of its own (real) slots only."""
    mine = self.placement.local_slots(slot_ids, jax.process_index())
    real = [s for s in mine if slot_ids[s] != PAD]
    local = (self._local_batches([int(slot_ids[s]) for s in real], round_idx)[0]
             if real else {})
    tokens = sum(multihost.allgather_json(int(local["attention_mask"].sum()) if real else 0))
    row_of = {s: i for i, s in enumerate(real)}
    shape = (len(slot_ids), self.local_steps, self.max_batch_size or self.batch_size,
             self.seq_len)
    dtypes = {"input_ids": np.int32, "attention_mask": np.int32, "loss_mask": np.float32}

    def rows(key):
      def row(s):
        if s in row_of:
          return local[key][row_of[s]]
        return np.zeros(shape[1:], dtypes[key])
      return row

    if self.engine.sharding is None:
      return ({k: np.stack([rows(k)(s) for s in range(len(slot_ids))]) for k in BATCH_KEYS},
              tokens)
    return ({k: multihost.global_from_rows(shape, dtypes[k], self.engine.sharding.by_client,
                                           rows(k)) for k in BATCH_KEYS}, tokens)

  def noise_keys(self, slot_ids: np.ndarray, round_idx: int):
    """[S, 2] uint32 DP-SGD keys (None without DP-SGD); this process fills the rows of its own
    hospitals only."""
    if self.dp_keys.level != "example":
      return None
    row = lambda s: self.dp_keys.noise_key(int(slot_ids[s]), round_idx)
    if self.engine.sharding is None:
      return np.stack([row(s) for s in range(len(slot_ids))])
    mine = set(self.placement.local_slots(slot_ids, jax.process_index()))
    return multihost.global_from_rows(
        (len(slot_ids), 2), np.uint32, self.engine.sharding.by_client,
        lambda s: row(s) if s in mine else np.zeros((2,), np.uint32))

  def participants(self, round_idx: int) -> np.ndarray:
    """Sorted client ids of round `round_idx`: m seeded ones (the ledger publishes them anyway),
    or a Poisson sample, drawn with the server's secret under client-level DP (from the seed
    without DP: there is nothing to amplify)."""
    n = len(self.data.train_names)
    if not self.sampling_rate:
      return F.sample_clients(n, self.per_round, seed=self.seed, round_idx=round_idx)
    if self.dp_keys.level == "client":
      return self.dp_keys.client_sample(n, self.sampling_rate, self.max_clients, round_idx)
    return F.poisson_clients(np.random.default_rng([self.seed, round_idx, POISSON_STREAM]), n,
                             self.sampling_rate, self.max_clients)

  def would_exceed_budget(self, round_idx: int) -> bool:
    """Whether round `round_idx` would take a party past `privacy.target_epsilon`."""
    if self.privacy is None:
      return False
    return self.privacy.would_exceed([self.data.train_names[c]
                                      for c in self.participants(round_idx)])

  def __call__(self, job: Job, gate: Gate, round_idx: int) -> dict[str, Any]:
    """Runs round `round_idx` (0-based) on `job` in place; returns its metrics record."""
    t0 = time.time()
    ids = self.participants(round_idx)
    slot_ids = self.placement.slot_ids(ids, self.max_clients or 0)
    batches, tokens = self.batches(slot_ids, round_idx)
    timing = {"data_s": time.time() - t0}
    trained = self.engine.train(job.state, job.base, batches, slot_ids,
                                self.noise_keys(slot_ids, round_idx))
    accept, num_samples = gate.admit(round_idx + 1, slot_ids, trained[0])
    timing["train_and_gate_s"] = time.time() - t0 - timing["data_s"]
    clip = self.privacy and self.privacy.clip_in_use(job.state["server_state"])
    job.state, job.base, m = self.engine.aggregate(job.state, job.base, trained, slot_ids,
                                                   num_samples, accept,
                                                   self.dp_keys.server_noise_key(round_idx))
    real = np.flatnonzero(slot_ids != PAD)
    real = real[np.argsort(slot_ids[real])]  # in client-id order
    names = [self.data.train_names[c] for c in slot_ids[real]]
    privacy = self.privacy and self.privacy.after_round(names, clip)
    ledger = gate.record(round_idx + 1, job.state["global_lora"], job.base, ledger_field(privacy))
    host = {k: multihost.gather_rows(m[k])[real] for k in ("loss", "valid", "weights")}
    aggregated = bool(multihost.host_value(m["aggregated"]))
    if not aggregated:
      logging.warning("round %d: too few valid clients (%d) for the aggregation rule; the global "
                      "adapter is unchanged", round_idx + 1, int(host["valid"].sum()))
    timing["round_s"] = time.time() - t0
    # Per-hospital training losses are not DP releases: with DP on, only their mean is written.
    loss = host["loss"].mean(axis=1)
    loss = [round(float(loss.mean()), 5)] if self.privacy else loss.round(5).tolist()
    return {
        "round": round_idx + 1, "clients": names,
        "loss": loss, "valid": host["valid"].tolist(),
        "weights": host["weights"].tolist(), "aggregated": aggregated, "ledger": ledger,
        "timing": {k: round(v, 3) for k, v in timing.items()},
        "slots": len(slot_ids), "tokens": tokens,
        **({"privacy": privacy} if privacy else {}),
    }


def run_rounds(job: Job, runner: RoundRunner, gate: Gate, hooks: Sequence[Hook],
               start: int) -> None:
  """Rounds `start` .. `job.rounds - 1`, each followed by the hooks in order. A round that would
  pass the privacy budget never starts (fresh run, resume or an explicit noise multiplier)."""
  for r in range(start, job.rounds):
    if runner.would_exceed_budget(r):
      job.stop = True
      logging.warning("privacy budget would be exceeded by round %d: not starting it", r + 1)
      break
    job.round_started = time.time()
    record = runner(job, gate, r)
    for hook in hooks:
      hook.after_round(job, record)
    if job.stop:
      break
