"""The hospital's Flower ClientApp: decode the message, `Hospital.handle` it, encode the reply.

Message types: "query" (describe this node), "train" (local update, signed), "evaluate"
(accuracy on the node's own test set), "query.ledger" (the ledger's blocks to keep and co-sign).
"""

from __future__ import annotations

import os

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedlora_jax.compile_cache import enable_compilation_cache
from fedlora_jax.sites import job
from fedlora_jax.sites.hospital import LEDGER_MESSAGE, Hospital
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


def _answer(msg: Message, context: Context) -> Message:
  payload = from_records(msg.content)
  kind = msg.metadata.message_type
  reply = _hospital(context, payload["header"]["config"]).handle(
      kind if kind == LEDGER_MESSAGE else kind.split(".")[0], payload)
  reply["result"]["bytes_received"] = payload_bytes(msg.content)
  return Message(to_records(reply), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
  return _answer(msg, context)


@app.query(LEDGER_MESSAGE.split(".")[1])
def ledger(msg: Message, context: Context) -> Message:
  return _answer(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
  return _answer(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
  return _answer(msg, context)
