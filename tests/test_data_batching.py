"""Round batches: shapes, per-round reshuffle, cycling small clients, no cross-client examples."""

import numpy as np
import pytest

from fedlora_jax.data import TokenizedMCQ, pooled, round_batches

S = 8


def _client(client: int, n: int) -> TokenizedMCQ:
  """Row i has input_ids[i, 0] = 1000 * client + i, so every example is identifiable."""
  ids = np.zeros((n, S), np.int32)
  ids[:, 0] = 1000 * client + np.arange(n)
  ids[:, 1] = client
  mask = np.ones((n, S), np.int32)
  loss = np.zeros((n, S), np.float32)
  loss[:, 5] = 1.0
  return TokenizedMCQ(ids, mask, loss, np.full(n, 4, np.int32), np.zeros(n, np.int32),
                      np.tile(np.arange(4, dtype=np.int32), (n, 1)))


CLIENTS = [_client(0, 40), _client(1, 100), _client(2, 5)]


def test_shapes_and_counts():
  batch, num = round_batches(CLIENTS, local_steps=3, batch_size=4, seed=0, round_idx=0)
  assert set(batch) == {"input_ids", "attention_mask", "loss_mask"}
  for k, dtype in [("input_ids", np.int32), ("attention_mask", np.int32),
                   ("loss_mask", np.float32)]:
    assert batch[k].shape == (3, 3, 4, S) and batch[k].dtype == dtype
  assert num.tolist() == [40, 100, 5] and num.dtype == np.int32
  assert (batch["loss_mask"][..., 5] == 1).all() and batch["loss_mask"].sum() == 3 * 3 * 4


def test_no_cross_client_and_epoch_cycling():
  batch, _ = round_batches(CLIENTS, local_steps=3, batch_size=4, seed=0, round_idx=0)
  ex = batch["input_ids"][..., 0].reshape(3, -1)              # [C, K*B] example ids
  for c, data in enumerate(CLIENTS):
    assert (batch["input_ids"][c, ..., 1] == c).all()
    own = set(data.input_ids[:, 0].tolist())
    assert set(ex[c].tolist()) <= own
  assert len(set(ex[0].tolist())) == 12 and len(set(ex[1].tolist())) == 12  # no repeats
  small = ex[2].tolist()                                      # 12 draws from 5 examples
  assert sorted(small[:5]) == sorted(small[5:10]) == [2000, 2001, 2002, 2003, 2004]
  assert set(small[10:]) <= set(small[:5]) and len(set(small[10:])) == 2


def test_fresh_order_each_round_and_deterministic():
  a, _ = round_batches(CLIENTS, local_steps=2, batch_size=5, seed=0, round_idx=0)
  b, _ = round_batches(CLIENTS, local_steps=2, batch_size=5, seed=0, round_idx=1)
  a2, _ = round_batches(CLIENTS, local_steps=2, batch_size=5, seed=0, round_idx=0)
  c, _ = round_batches(CLIENTS, local_steps=2, batch_size=5, seed=1, round_idx=0)
  np.testing.assert_array_equal(a["input_ids"], a2["input_ids"])
  for other in (b, c):
    for client in range(3):
      assert not np.array_equal(a["input_ids"][client], other["input_ids"][client])


def test_client_subset_keeps_each_clients_stream():
  full, _ = round_batches(CLIENTS, local_steps=2, batch_size=3, seed=4, round_idx=7)
  sub, num = round_batches(CLIENTS, local_steps=2, batch_size=3, seed=4, round_idx=7,
                           client_ids=[2, 0])
  assert num.tolist() == [5, 40]
  np.testing.assert_array_equal(sub["input_ids"][0], full["input_ids"][2])
  np.testing.assert_array_equal(sub["input_ids"][1], full["input_ids"][0])


def test_pooled_baseline():
  pool = pooled(CLIENTS)
  assert len(pool) == 145
  assert sorted(pool.input_ids[:, 0].tolist()) == sorted(
      np.concatenate([c.input_ids[:, 0] for c in CLIENTS]).tolist())
  batch, num = round_batches([pool], local_steps=2, batch_size=8, seed=0, round_idx=0)
  assert batch["input_ids"].shape == (1, 2, 8, S) and num.tolist() == [145]
  with pytest.raises(ValueError):
    round_batches([CLIENTS[0], _client(3, 4).take([])], local_steps=1, batch_size=2, seed=0,
                  round_idx=0)
