"""What happens after each round, as small hooks: evaluation, metrics, checkpoints.

The loop (`run/loop.py`) calls `after_round(job, record)` on each hook in order: evaluation adds
accuracies to the round's record, metrics appends it (metrics.jsonl, TensorBoard, the progress
line), then the checkpoint saves the state. Metrics come before the checkpoint so that a crash
between them loses nothing: a resumed run drops records past its checkpoint and recomputes them.
Hooks that write files do so on process 0 only; the evaluation and orbax saves are collectives
that every process runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from fedlora_jax.eval import fairness_summary
from fedlora_jax.federated import Algorithm
from fedlora_jax.run import multihost
from fedlora_jax.run.checkpoint import Checkpointer
from fedlora_jax.run.evaluation import Evaluator
from fedlora_jax.run.workdir import MetricsLog

PERSONALISED = ("fedsa_lora", "local")


@dataclasses.dataclass
class Job:
  """The run's live state, handed to every hook: federated state, base, rounds."""

  state: dict
  base: Any
  rounds: int  # the configured number of rounds
  algorithm: Algorithm
  test_names: list[str]
  test_sizes: list[int]
  round_started: float = 0.0  # time.time() when the current round began
  stop: bool = False  # a hook asks the loop to end after this round (privacy budget)


class Hook(Protocol):

  def after_round(self, job: Job, record: dict[str, Any]) -> None:
    ...


def eval_loras(algorithm: Algorithm, state: dict) -> Any:
  """Adapters to evaluate, with a leading model axis: each client's own, or the global one."""
  if algorithm.name in PERSONALISED:
    return jax.vmap(algorithm.personal_lora, in_axes=(None, 0))(state["global_lora"],
                                                               state["client_states"])
  return jax.tree.map(lambda x: x[None], state["global_lora"])


def per_client(matrix: np.ndarray, test_sizes: list[int]) -> tuple[list[float], list[float]]:
  """(own-test accuracy, accuracy over all hospitals' tests) per hospital from [M, T].

  M == T personal models (row i is hospital i's model), or M == 1 model shared by every hospital.
  """
  sizes = np.asarray(test_sizes, np.float64)
  overall_m = matrix @ sizes / sizes.sum()
  if matrix.shape[0] == 1:
    own, across = matrix[0], np.repeat(overall_m, matrix.shape[1])
  else:
    own, across = np.diag(matrix), overall_m
  return [float(a) for a in own], [float(a) for a in across]


class EvaluationHook:
  """Own-test accuracy every `every` rounds (on at most `round_max_questions` questions per
  hospital, 0 = all), and after the last round the full model x test-set matrix on every
  question."""

  def __init__(self, evaluator: Evaluator, *, every: int, round_max_questions: int = 0):
    self.evaluator = evaluator
    self.every = every
    self.round_max_questions = round_max_questions
    self.matrix: np.ndarray | None = None
    self.correct: list[np.ndarray] | None = None  # per test set [M, N_t] bool, after the last round

  def _models(self, job: Job):
    loras = eval_loras(job.algorithm, job.state)
    sh = self.evaluator.sharding
    return loras if sh is None else sh.put(loras, sh.replicated)

  def own_accuracy(self, job: Job, max_questions: int = 0) -> list[float]:
    loras = self._models(job)
    num_models = jax.tree.leaves(loras)[0].shape[0]
    pairs = [(0 if num_models == 1 else t, t) for t in range(len(job.test_names))]
    acc = self.evaluator.accuracy(job.base, loras, pairs, max_questions)
    return [float(acc[m, t]) for m, t in pairs]

  def full_matrix(self, job: Job) -> np.ndarray:
    """[M, T]: every evaluated adapter on every hospital's whole test set (the per-question
    correctness behind it is kept in `self.correct`)."""
    self.correct = self.evaluator.correct_matrix(job.base, self._models(job))
    return np.stack([c.mean(axis=1) for c in self.correct], axis=1)

  def base_record(self, job: Job) -> dict[str, Any]:
    """Round 0: the model before any federated training, for reference."""
    t0 = time.time()
    own = self.own_accuracy(job, self.round_max_questions)
    return {"round": 0, "clients": [], "loss": [], "valid": [], "weights": [], "ledger": {},
            "accuracy": dict(zip(job.test_names, own)), "summary": fairness_summary(own),
            "seconds": round(time.time() - t0, 3)}

  def after_round(self, job: Job, record: dict[str, Any]) -> None:
    r = record["round"]
    if r == job.rounds:
      self.matrix = self.full_matrix(job)
      own, across = per_client(self.matrix, job.test_sizes)
      record.update(accuracy=dict(zip(job.test_names, own)), summary=fairness_summary(own),
                    accuracy_all_tests=dict(zip(job.test_names, across)))
    elif r % self.every == 0:
      own = self.own_accuracy(job, self.round_max_questions)
      record.update(accuracy=dict(zip(job.test_names, own)), summary=fairness_summary(own))


class MetricsHook:
  """metrics.jsonl (one record per round), TensorBoard scalars when tensorboardX is installed,
  and one progress line per round; process 0 only."""

  def __init__(self, workdir: str, *, keep_until_round: int, clients_per_round: int):
    self.per_round = clients_per_round
    self.log = None
    self.tensorboard = None
    if multihost.is_writer():
      self.log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), keep_until_round)
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:
        logging.info("tensorboardX is not installed: no TensorBoard event files "
                     "(pip install 'fedlora-jax[tensorboard]')")

  def after_round(self, job: Job, record: dict[str, Any]) -> None:
    record["seconds"] = round(time.time() - job.round_started, 3)
    if self.log is None:
      return
    self.log.append(record)
    if self.tensorboard is not None:
      for tag, value in scalars(record).items():
        self.tensorboard.add_scalar(tag, value, record["round"])
      self.tensorboard.flush()
    progress(record, self.per_round)

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()


def scalars(record: dict[str, Any]) -> dict[str, float]:
  """The TensorBoard scalars of one round's record."""
  out = {}
  if record["loss"]:
    out["train/loss"] = float(np.mean(record["loss"]))
  for k, v in record.get("summary", {}).items():
    if isinstance(v, (int, float)):
      out[f"accuracy/{k}"] = float(v)
  for name, v in record.get("accuracy", {}).items():
    out[f"accuracy_by_hospital/{name}"] = float(v)
  return out


def progress(record: dict[str, Any], per_round: int) -> None:
  line = f"round {record['round']:3d} | clients {per_round}"
  if record["loss"]:
    line += f" | loss {float(np.mean(record['loss'])):.4f}"
  if "summary" in record:
    s = record["summary"]
    line += (f" | acc mean {s['mean']:.3f} worst {s['min']:.3f} hmean "
             f"{s['harmonic_mean']:.3f}")
  if "privacy" in record:
    line += f" | eps {max(record['privacy']['epsilon'].values()):.2f}"
  if record["ledger"]:
    line += f" | ledger block {record['ledger']['block']} ({record['ledger']['accepted']} attested)"
  logging.info("%s | %.1f s", line, record["seconds"])


class CheckpointHook:
  """orbax save of the state (and the base, when the algorithm changes it) every N rounds and
  after the last; every process takes part."""

  def __init__(self, checkpointer: Checkpointer, ledger_head=lambda: None):
    self.checkpointer = checkpointer
    self.ledger_head = ledger_head

  def after_round(self, job: Job, record: dict[str, Any]) -> None:
    r = record["round"]
    trees = {"state": job.state, **({"base": job.base} if job.algorithm.updates_base else {})}
    self.checkpointer.save(r, trees, {"round": r, "ledger_head": self.ledger_head()},
                           force=r == job.rounds or job.stop)


class PrivacyHook:
  """Asks the loop to stop, after this round's checkpoint, when the next round would pass
  `privacy.target_epsilon` (the round's epsilon is counted by the runner's `PrivacyMeter`; the
  loop itself never starts a round past the budget, this only forces the checkpoint)."""

  def __init__(self, would_exceed: Callable[[int], bool], *, target_epsilon: float):
    self.would_exceed = would_exceed  # round index (0-based) -> bool
    self.target_epsilon = target_epsilon

  def after_round(self, job: Job, record: dict[str, Any]) -> None:
    if record["round"] < job.rounds and self.would_exceed(record["round"]):
      job.stop = True
      logging.warning("privacy budget epsilon=%g would be exceeded by round %d: stopping",
                      self.target_epsilon, record["round"] + 1)
