"""The hospital's Flower ClientApp: a thin shim that relays each message to the hospital's
long-lived worker (`sites.worker`, started next to the SuperNode with `scripts/site_worker.py`)
over the node's local socket (`sites.channel`) and returns its reply.

Flower starts a fresh ClientApp process per message, so this module imports no JAX and builds
nothing: the model, data, key and client state stay warm in the worker. When the worker is down
or answers with an error, the ClientApp raises; Flower returns the error to the server, which
records the hospital as missing (`node_error`).

Message types: "query" (describe this node), "train" (local update, signed), "evaluate"
(accuracy on the node's own test set), "query.ledger" (the ledger's blocks to keep and co-sign).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common import serde
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedlora_jax.sites import channel

app = ClientApp()


def _relay(msg: Message, context: Context) -> Message:
  state_dir = str(context.node_config.get("state-dir", ""))
  if not state_dir:
    raise ValueError("node config has no state-dir: cannot find the hospital worker")
  body = serde.recorddict_to_proto(msg.content).SerializeToString()
  reply = ProtoRecordDict()
  reply.ParseFromString(channel.request(state_dir, msg.metadata.message_type, body))
  return Message(serde.recorddict_from_proto(reply), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
  return _relay(msg, context)


@app.query("ledger")  # sites.hospital.LEDGER_MESSAGE (not imported: it pulls in JAX)
def ledger(msg: Message, context: Context) -> Message:
  return _relay(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
  return _relay(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
  return _relay(msg, context)
