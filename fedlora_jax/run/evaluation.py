"""Accuracy of adapters on the hospitals' test sets, computed where each test set lives.

Evaluation is one SPMD program like training: its leading axis holds slots on the mesh's client
rows, each slot one (adapter, batch of one test set) pair. A process fills only the slots of its
own rows, with batches of its own hospitals' test sets, so test data never leaves its host; the
predictions stay sharded and each process scores its own slots. Only [M, T] correct counts cross
hosts. `group_size` bounds how many pairs a device evaluates at once (activation memory).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from fedlora_jax.data import TokenizedMCQ
from fedlora_jax.eval import predict_options
from fedlora_jax.federated import ClientSharding
from fedlora_jax.federated.placement import ClientPlacement
from fedlora_jax.models import last_logits
from fedlora_jax.run import multihost


class Evaluator:
  """Scores [M] adapters (a leading model axis on every LoRA leaf) on the hospitals' test sets.

  Args:
    graphdef: the model graph.
    tests: {test index: tokenized test set} held by this process.
    placement: which process holds each test set (and the mesh rows of each process).
    sharding: the run's mesh (None: one device).
    batch_size: questions per (adapter, test set) pair and step.
    group_size: pairs per client row and step (at most).
  """

  def __init__(self, graphdef, tests: dict[int, TokenizedMCQ], placement: ClientPlacement,
               sharding: ClientSharding | None, *, batch_size: int, group_size: int = 8):
    self.graphdef = graphdef
    self.tests = tests
    self.placement = placement
    self.sharding = sharding
    self.batch_size = batch_size
    self.group_size = max(1, group_size)
    local_options = max([t.option_token_ids.shape[1] for t in tests.values()], default=1)
    seq = {t.seq_len for t in tests.values()}
    self.num_options = max(multihost.allgather_json(local_options))
    self.seq_len = max(multihost.allgather_json(max(seq, default=0)))
    self._jitted = {}

  def _predict(self, num_slots: int):
    if num_slots not in self._jitted:
      graphdef = self.graphdef

      def predict(base, lora_m, model_s, ids_sbt, mask_sbt, pos_sb, options_sbo, option_ok_so):
        def one(m, ids_bt, mask_bt, pos_b, options_bo, ok_o):
          lora = jax.tree.map(lambda x: x[m], lora_m)
          return predict_options(last_logits(graphdef, base, lora, ids_bt, mask_bt, pos_b),
                                 options_bo, ok_o)
        return jax.vmap(one)(model_s, ids_sbt, mask_sbt, pos_sb, options_sbo, option_ok_so)

      kw = {} if self.sharding is None else {"out_shardings": self.sharding.by_client}
      self._jitted[num_slots] = jax.jit(predict, **kw)
    return self._jitted[num_slots]

  def _correct_here(self, base, lora_m, pairs, max_questions: int
                    ) -> dict[tuple[int, int], np.ndarray]:
    """{(m, t): [n] bool, question right} for the pairs whose test set this process holds."""
    me = jax.process_index()
    items = []  # (model, test set, first question, questions) of one batch each
    for m, t in pairs:
      if t in self.tests:
        n = len(self.tests[t]) if not max_questions else min(len(self.tests[t]), max_questions)
        items += [(m, t, start, n) for start in range(0, n, self.batch_size)]
    rows = len(self.placement.rows_of(me))
    needed = max(-(-count // r) for count, r in multihost.allgather_json([len(items), rows]))
    per_row = min(self.group_size, max(needed, 1))
    steps = -(-needed // per_row)
    slots = self.placement.num_rows * per_row
    positions = [i * per_row + j for i in self.placement.rows_of(me) for j in range(per_row)]
    predict = self._predict(slots)
    right: dict[tuple[int, int], np.ndarray] = {}
    for step in range(steps):
      mine = dict(zip(positions, items[step * len(positions):(step + 1) * len(positions)]))
      pred_sb = predict(base, lora_m, *self._inputs(mine, slots))
      for s, rows_pred in multihost.host_rows(pred_sb).items():
        if s in mine:
          m, t, start, n = mine[s]
          count = min(self.batch_size, n - start)
          if (m, t) not in right:
            right[(m, t)] = np.zeros(n, bool)
          right[(m, t)][start:start + count] = (
              rows_pred[:count] == self.tests[t].labels[start:start + count])
    return right

  def correct_counts(self, base, lora_m, pairs: Sequence[tuple[int, int]],
                     max_questions: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(correct [M, T], questions [M, T]) for the (model m, test set t) `pairs`.

    Every process passes the same pairs; each scores those whose test set it holds.
    `max_questions` > 0 uses only the first questions of each test set.
    """
    num_models = jax.tree.leaves(lora_m)[0].shape[0]
    shape = (num_models, len(self.placement.home))
    correct, seen = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    here = self._correct_here(base, lora_m, pairs, max_questions)
    for (m, t), right in here.items():
      correct[m, t], seen[m, t] = int(right.sum()), len(right)
    totals = multihost.allgather_json([correct.tolist(), seen.tolist()])
    return (np.sum([np.asarray(c) for c, _ in totals], axis=0),
            np.sum([np.asarray(n) for _, n in totals], axis=0))

  def accuracy(self, base, lora_m, pairs: Sequence[tuple[int, int]],
               max_questions: int = 0) -> np.ndarray:
    """[M, T] accuracy of each pair (NaN where not evaluated)."""
    correct, seen = self.correct_counts(base, lora_m, pairs, max_questions)
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(seen > 0, correct / np.maximum(seen, 1), np.nan)

  def correct_matrix(self, base, lora_m) -> list[np.ndarray]:
    """Per test set t, [M, N_t] bool: whether adapter m answers each question right (every
    adapter on every whole test set; gathered on every process, for paired bootstraps)."""
    num_models = jax.tree.leaves(lora_m)[0].shape[0]
    num_tests = len(self.placement.home)
    pairs = [(m, t) for m in range(num_models) for t in range(num_tests)]
    here = self._correct_here(base, lora_m, pairs, 0)
    mine = {t: np.stack([here[(m, t)] for m in range(num_models)]).tolist()
            for t in self.tests}
    out: dict[int, np.ndarray] = {}
    for part in multihost.allgather_json(mine):
      out.update({int(t): np.asarray(v, bool) for t, v in part.items()})
    return [out[t] for t in range(num_tests)]

  def _inputs(self, mine: dict[int, tuple[int, int, int, int]], slots: int):
    b, o, s_len = self.batch_size, self.num_options, self.seq_len

    def row(s: int):
      if s not in mine:
        return (0, np.zeros((b, s_len), np.int32), np.zeros((b, s_len), np.int32),
                np.zeros((b,), np.int32), np.zeros((b, o), np.int32), np.arange(o) == 0)
      m, t, start, n = mine[s]
      data = self.tests[t]
      idx = np.arange(start, start + b)
      idx[idx >= n] = start  # pad with a real row so every batch has one shape
      opts = np.asarray(data.option_token_ids[idx], np.int32)
      num = opts.shape[1]
      return (m, data.input_ids[idx], data.attention_mask[idx], data.answer_pos[idx],
              np.pad(opts, ((0, 0), (0, o - num)), mode="edge"), np.arange(o) < num)

    cache: dict[int, tuple] = {}
    def field(k: int, dtype, shape):
      def get(s):
        if s not in cache:
          cache[s] = row(s)
        return np.asarray(cache[s][k], dtype)
      if self.sharding is None:
        return np.stack([get(s) for s in range(slots)])
      return multihost.global_from_rows((slots, *shape), dtype, self.sharding.by_client, get)

    return (field(0, np.int32, ()), field(1, np.int32, (b, s_len)),
            field(2, np.int32, (b, s_len)), field(3, np.int32, (b,)),
            field(4, np.int32, (b, o)), field(5, bool, (o,)))
