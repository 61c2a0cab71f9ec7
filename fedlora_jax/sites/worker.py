"""A hospital's long-lived worker: the one process that holds its model, data, key and client
state, and answers every Flower message the node gets (relayed by the thin ClientApp over
`channel`).

The first message of a job builds the `Hospital` (base loaded, data tokenised, the local update
compiled, with the node's persistent JAX compilation cache); every later message of that job
reuses it. A message of another job (a different job config) replaces it: the previous job's
model and compiled functions are dropped first, so one worker serves jobs one after another
without growing. Everything a restart must keep (client state, receipts, issued attestations)
is in the state directory, so a restarted worker resumes where the last one stopped.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time

import jax
from flwr.common import serde
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedlora_jax.compile_cache import enable_compilation_cache
from fedlora_jax.sites import channel, job
from fedlora_jax.sites.hospital import LEDGER_MESSAGE, Hospital
from fedlora_jax.sites.messages import from_records, payload_bytes, to_records
from fedlora_jax.sites.node_config import NodeConfig


class Worker:
  """Answers the messages of one node (its `NodeConfig`), one at a time."""

  def __init__(self, node: NodeConfig):
    self.node = node
    self.hospital: Hospital | None = None
    self.config_json = ""
    enable_compilation_cache(os.path.join(node.state_dir, "jax_cache"))

  def _hospital(self, config_json: str) -> Hospital:
    if self.hospital is None or config_json != self.config_json:
      self.hospital, self.config_json = None, ""
      gc.collect()  # the previous job's model and arrays
      jax.clear_caches()  # and its compiled functions (the persistent cache keeps them on disk)
      self.hospital = Hospital(self.node, job.config_from_json(config_json))
      self.config_json = config_json
    return self.hospital

  def answer(self, kind: str, body: bytes) -> bytes:
    """The reply RecordDict (Flower's protobuf bytes) to one message's RecordDict."""
    proto = ProtoRecordDict()
    proto.ParseFromString(body)
    content = serde.recorddict_from_proto(proto)
    payload = from_records(content)
    t0 = time.perf_counter()
    reply = self._hospital(payload["header"]["config"]).handle(
        kind if kind == LEDGER_MESSAGE else kind.split(".")[0], payload)
    reply["result"]["worker_s"] = round(time.perf_counter() - t0, 3)  # the work, without Flower
    reply["result"]["bytes_received"] = payload_bytes(content)
    return serde.recorddict_to_proto(to_records(reply)).SerializeToString()

  def serve_one(self, conn: socket.socket) -> None:
    """One connection: a request from this account, its reply (or a one-line error)."""
    if channel.peer_uid(conn) != os.getuid():
      logging.warning("refused a connection from another account")
      return
    try:
      header, body = channel.recv_frames(conn)
    except channel.ChannelError as e:  # a readiness probe, or a ClientApp that died
      logging.info("no request on a connection: %s", e)
      return
    kind, t0 = str(header.get("kind", "")), time.time()
    logging.info("%s message received (%d bytes)", kind, len(body))
    try:
      reply, out = self.answer(kind, body), {"ok": True}
    except Exception as e:  # noqa: BLE001 -- every failure goes back to the server as one line
      logging.exception("message %s failed", header.get("kind"))
      line = f"{type(e).__name__}: {e}".splitlines()[0][:500]
      reply, out = b"", {"ok": False, "error": line}
    try:
      channel.send_frames(conn, out, reply)
      logging.info("%s message answered in %.3f s", kind, time.time() - t0)
    except OSError as e:
      logging.warning("the ClientApp left before the reply: %s", e)

  def serve(self) -> None:
    """Serves until killed (SIGTERM or SIGINT); removes the socket file on the way out."""
    sock = channel.listen(self.node.state_dir)
    logging.info("hospital %s: worker listening at %s", self.node.hospital,
                 channel.socket_path(self.node.state_dir))
    try:
      while True:
        conn, _ = sock.accept()
        with conn:
          self.serve_one(conn)
    finally:
      sock.close()
      try:
        os.unlink(channel.socket_path(self.node.state_dir))
      except FileNotFoundError:
        pass
