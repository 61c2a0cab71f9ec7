"""The hospital's Flower ClientApp: decode the message, call `Hospital`, encode the reply.

Message types: "query" (describe this node), "train" (local update, signed), "evaluate"
(settle the round's receipt, then accuracy on the node's own test set).
"""

from __future__ import annotations

import os

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedlora_jax.sites import job
from fedlora_jax.sites.hospital import Hospital, enable_compilation_cache
from fedlora_jax.sites.messages import from_records, payload_bytes, to_records
from fedlora_jax.sites.node_config import NodeConfig

app = ClientApp()
_HOSPITALS: dict[tuple, Hospital] = {}  # per process: reused when Flower keeps it alive


def _hospital(context: Context, config_json: str) -> Hospital:
  node = NodeConfig.parse(dict(context.node_config))
  key = (node, config_json)
  if key not in _HOSPITALS:
    enable_compilation_cache(os.path.join(node.state_dir, "jax_cache"))
    _HOSPITALS[key] = Hospital(node, job.config_from_json(config_json))
  return _HOSPITALS[key]


def _settle(h: Hospital, task: dict) -> None:
  """A receipt for this node's last submission travels with the next message it gets."""
  if task.get("receipt") and not h.settle(task["receipt"]):
    raise ValueError("the server's receipt does not verify under the pinned server key")


@app.query()
def query(msg: Message, context: Context) -> Message:
  p = from_records(msg.content)
  h = _hospital(context, p["header"]["config"])
  info = h.describe()
  if p["task"]["evaluate"]:
    info.update(h.evaluate(0, p["global"]))
  return Message(to_records({"info": info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
  p = from_records(msg.content)
  h = _hospital(context, p["header"]["config"])
  t = p["task"]
  _settle(h, t)
  reply = h.train(int(t["round"]), int(t["client_id"]), int(t["max_target_tokens"]),
                  p["global"], p["server_state"], t["context"])
  arrays = {k: reply.pop(k) for k in ("update", "client_state_old", "client_state_new")}
  reply["bytes_received"] = payload_bytes(msg.content)
  return Message(to_records({**arrays, "result": reply}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
  p = from_records(msg.content)
  h = _hospital(context, p["header"]["config"])
  _settle(h, p["task"])
  return Message(to_records({"result": h.evaluate(int(p["task"]["round"]), p["global"])}),
                 reply_to=msg)
