"""The deploy benchmark's table: round 1 apart from the median of later rounds, and mean array
bytes per hospital per round, from the runs' metrics records."""

import os

from fedlora_jax.sites.bench import DEPLOY_HEADING, deploy_lines


def test_deploy_table_from_records():
  flower_bytes = [{"a": {"received": 2_000_000, "sent": 1_000_000},
                   "b": {"received": 4_000_000, "sent": 3_000_000}},
                  {"a": {"received": 3_000_000, "sent": 2_000_000}}]  # b missing in round 2
  res = {"hospitals": ["a", "b"], "rounds": 3, "command": "python scripts/benchmark.py",
         "date": "today", "job": "configs/default.py", "load_average_at_end": (5.0, 4.0, 3.0),
         "simulation": {"wall_s": 60.0, "round_s": [20.0, 2.0, 4.0], "bytes": [{}, {}, {}]},
         "flower": {"wall_s": 300.0, "round_s": [90.0, 30.0, 40.0, 50.0],
                    "bytes": flower_bytes, "message_s": [None, 3.0, 5.0, 4.0]}}
  lines = deploy_lines(res)
  assert lines[0] == DEPLOY_HEADING
  assert "| round 1 s (compiles) | 20.0 | 90.0 |" in lines
  assert "| later rounds s (median; node compilation cache) | 3.0 | 40.0 |" in lines
  assert ("| Flower's message path per later round s (median; two message rounds) | — | 4.0 |"
          in lines)
  # each round minus its message path: 27, 35, 46 -> median 35
  assert "| later rounds without Flower's message path s (median) | 3.0 | 35.0 |" in lines
  assert "| bytes received per hospital per round (MB) | — (in process) | 3.000 |" in lines
  assert "| bytes sent per hospital per round (MB) | — (in process) | 2.000 |" in lines
  assert "5.0, 4.0, 3.0" in lines[2] and f"on {os.cpu_count()} cores" in lines[2]


def test_flower_latency_is_each_message_round_minus_its_slowest_worker():
  from fedlora_jax.sites.bench import _message_latency
  assert _message_latency({"train_s": 10.0, "worker_s": {"a": 4.0, "b": 7.5}}) == 2.5
  assert _message_latency({"train_s": 10.0, "worker_s": {"a": 4.0, "b": 7.5},
                           "after_round_s": 6.0,
                           "after_round_worker_s": {"a": 1.0, "b": 0.5}}) == 7.5
  assert _message_latency({"train_s": 10.0, "worker_s": {}}) is None  # in-process transport
