"""The run loop's pieces: client placement and slots, evaluation where the data lives, gates,
TensorBoard scalars."""

import glob
import json
import os
import struct

import jax
import numpy as np
import pytest

from fedlora_jax import models
from fedlora_jax.data import TokenizedMCQ
from fedlora_jax.federated.placement import ClientPlacement
from fedlora_jax.federated.round import PAD
from fedlora_jax.run.evaluation import Evaluator
from fedlora_jax.run.gates import OpenGate
from fedlora_jax.run.hooks import scalars
from tests.fed_fixtures import tiny_model


class _Dev:
  def __init__(self, process_index):
    self.process_index = process_index


class _Mesh:
  """Just enough of a mesh for ClientPlacement: client rows x model devices."""

  def __init__(self, processes_by_row, model=2):
    self.devices = np.asarray([[_Dev(p)] * model for p in processes_by_row], dtype=object)
    self.shape = {"clients": len(processes_by_row), "model": model}


def test_placement_homes_and_slots_on_a_two_process_mesh():
  placement = ClientPlacement.create(6, _Mesh([0, 0, 1, 1]))
  assert placement.home == (0, 0, 0, 1, 1, 1)
  assert placement.hospitals_of(1) == [3, 4, 5]
  # Three clients per process on two rows each: two slots per row, one padding slot per process.
  slots = placement.slot_ids([0, 1, 2, 3, 4, 5])
  assert slots.tolist() == [0, 1, 2, PAD, 3, 4, 5, PAD]
  assert placement.local_slots(slots, 1) == [4, 5, 6, 7]
  # Partial participation: each process's sampled clients on its own rows.
  assert placement.slot_ids([1, 4]).tolist() == [1, PAD, 4, PAD]
  assert placement.slot_ids([0, 1, 2, 5]).tolist() == [0, 1, 2, PAD, 5, PAD, PAD, PAD]


def test_placement_refuses_a_model_axis_across_hosts():
  mesh = _Mesh([0, 1])
  mesh.devices[0, 1] = _Dev(1)
  with pytest.raises(ValueError, match="client row 0 .* spans processes \\[0, 1\\]"):
    ClientPlacement.create(4, mesh)


def test_single_device_placement_pads_nothing():
  placement = ClientPlacement.create(3, None)
  assert placement.slot_ids([0, 2]).tolist() == [0, 2]


def _test_set(rng, n, options, vocab=64, s=8):
  ids = rng.integers(2, vocab, (n, s)).astype(np.int32)
  mask = np.ones((n, s), np.int32)
  mask[: n // 2, -2:] = 0
  pos = np.where(mask[:, -1] == 1, s - 1, s - 3).astype(np.int32)
  opts = np.stack([rng.choice(np.arange(2, vocab), options, replace=False)  # each row its own
                   for _ in range(n)]).astype(np.int32)
  return TokenizedMCQ(ids, mask, np.zeros((n, s), np.float32), pos,
                      rng.integers(0, options, n).astype(np.int32), opts)


@pytest.mark.parametrize("group_size", [1, 8])
def test_evaluator_matches_per_question_scoring(group_size):
  graphdef, base, lora = tiny_model()
  rng = np.random.default_rng(0)
  tests = {0: _test_set(rng, 7, 4), 1: _test_set(rng, 3, 3), 2: _test_set(rng, 5, 5)}
  key = jax.random.key(1)
  lora_m = jax.tree.map(lambda x: jax.numpy.stack(  # three different adapters
      [x, x + 0.05 * jax.random.normal(key, x.shape), x - 0.05]), lora)
  evaluator = Evaluator(graphdef, tests, ClientPlacement.create(3, None), None, batch_size=2,
                        group_size=group_size)
  pairs = [(m, t) for m in range(3) for t in range(3)]
  acc = evaluator.accuracy(base, lora_m, pairs)
  expected = np.zeros((3, 3))
  for m in range(3):
    lora_one = jax.tree.map(lambda x: x[m], lora_m)
    for t, data in tests.items():
      logits = models.last_logits(graphdef, base, lora_one, data.input_ids, data.attention_mask,
                                  data.answer_pos)
      option_logits = np.take_along_axis(np.asarray(logits), data.option_token_ids, axis=-1)
      pred = np.argmax(option_logits, axis=-1)
      expected[m, t] = np.mean(pred == data.labels)
  np.testing.assert_array_equal(acc, expected)
  # A subset: only (m, t) pairs asked for, on the first 2 questions of each test set.
  part = evaluator.accuracy(base, lora_m, [(1, 0), (2, 2)], max_questions=2)
  assert np.isnan(part[0, 0]) and not np.isnan(part[1, 0]) and not np.isnan(part[2, 2])
  correct, seen = evaluator.correct_counts(base, lora_m, [(1, 0)], max_questions=2)
  assert seen[1, 0] == 2 and seen.sum() == 2 and correct[1, 0] == part[1, 0] * 2


def test_open_gate_weights_real_slots_by_training_set_size():
  gate = OpenGate([10, 20, 30])
  accept, counts = gate.admit(1, np.array([2, 0, PAD]), None)
  assert accept.tolist() == [True, True, False] and counts.tolist() == [30.0, 10.0, 0.0]


def _event_scalars(logdir):
  """{(tag, step): value} read back from tensorboardX's TFRecord event files."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  out = {}
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    with open(path, "rb") as f:
      raw = f.read()
    i = 0
    while i < len(raw):
      (length,) = struct.unpack("<Q", raw[i:i + 8])
      event = event_pb2.Event.FromString(raw[i + 12:i + 12 + length])
      i += 12 + length + 4
      for v in event.summary.value:
        out[(v.tag, event.step)] = v.simple_value
  return out


def test_tensorboard_scalars_equal_the_metrics(tmp_path):
  pytest.importorskip("tensorboardX")
  from fedlora_jax.run.hooks import Job, MetricsHook  # pylint: disable=import-outside-toplevel
  hook = MetricsHook(str(tmp_path), keep_until_round=-1, clients_per_round=2)
  job = Job(state={}, base=None, rounds=2, algorithm=None, test_names=["a", "b"],
            test_sizes=[1, 1])
  records = [{"round": r, "loss": [0.5 / r, 1.0 / r], "ledger": {}, "accuracy": {"a": 0.25 * r,
              "b": 0.5}, "summary": {"mean": 0.1 * r, "min": 0.05 * r, "harmonic_mean": 0.07}}
             for r in (1, 2)]
  for record in records:
    hook.after_round(job, record)
  hook.close()
  got = _event_scalars(os.path.join(tmp_path, "tensorboard"))
  with open(tmp_path / "metrics.jsonl") as f:
    logged = [json.loads(line) for line in f]
  assert [r["round"] for r in logged] == [1, 2]
  for r in logged:
    assert got[("train/loss", r["round"])] == pytest.approx(np.mean(r["loss"]))
    assert got[("accuracy/min", r["round"])] == pytest.approx(r["summary"]["min"])
    assert got[("accuracy_by_hospital/a", r["round"])] == pytest.approx(r["accuracy"]["a"])
  assert scalars(records[0])["accuracy/mean"] == pytest.approx(0.1)
