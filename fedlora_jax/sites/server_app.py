"""The operator's Flower ServerApp: the `Coordinator` over Flower's Grid.

Run config: `job-config`, the path of the job's ml_collections config as JSON (written by
`scripts/deploy_local.py`; the same fields as `scripts/train.py` takes).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from flwr.app import Context, Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from fedlora_jax.sites import job
from fedlora_jax.sites.coordinator import Admit, Coordinator
from fedlora_jax.sites.messages import from_records, payload_bytes, to_records

app = ServerApp()
# How often the ServerApp asks the SuperLink for replies. Flower's `Grid.send_and_receive` asks
# every 3 s, which adds up to 3 s to each message round (two or three per training round).
REPLY_POLL_S = 0.1


def exchange(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
  """Pushes `messages` and pulls their replies every `REPLY_POLL_S` until all have come back or
  `timeout` seconds have passed (`Grid.send_and_receive`, polling faster)."""
  pending = set(grid.push_messages(messages))
  deadline = time.time() + timeout
  replies: list[Message] = []
  while pending:
    got = list(grid.pull_messages(pending))
    replies.extend(got)
    pending.difference_update(m.metadata.reply_to_message_id for m in got)
    if not pending or time.time() >= deadline:
      break
    time.sleep(REPLY_POLL_S)
  return replies


class FlowerTransport:
  """`coordinator.Transport` over a Flower Grid; hospitals are mapped to node ids by `discover`."""

  def __init__(self, grid: Grid, header: dict[str, Any]):
    self.grid = grid
    self.header = header
    self.node_of: dict[str, int] = {}
    self.refused: set[int] = set()  # node ids whose claim was refused

  def discover(self, payload, expected: int, timeout: float, admit: Admit
               ) -> dict[str, dict[str, Any]]:
    deadline = time.time() + timeout
    while len(list(self.grid.get_node_ids())) < expected and time.time() < deadline:
      time.sleep(0.5)
    return self._query(list(self.grid.get_node_ids()), payload, max(deadline - time.time(), 1.0),
                       admit)

  def rejoin(self, payload, timeout: float, admit: Admit) -> dict[str, dict[str, Any]]:
    """Queries nodes that connected since (a restarted SuperNode comes back with a new id);
    a node refused before is not asked again."""
    known = set(self.node_of.values()) | self.refused
    fresh = [n for n in self.grid.get_node_ids() if n not in known]
    return self._query(fresh, payload, timeout, admit) if fresh else {}

  def _query(self, nodes: list[int], payload, timeout: float, admit: Admit
             ) -> dict[str, dict[str, Any]]:
    msgs = [Message(to_records({"header": self.header, **payload}), dst_node_id=n,
                    message_type="query") for n in nodes]
    out: dict[str, dict[str, Any]] = {}
    for rep in exchange(self.grid, msgs, timeout):
      if rep.has_error():
        logging.warning("node %d: %s", rep.metadata.src_node_id, rep.error.reason)
        continue
      info = {**from_records(rep.content)["result"], "node_id": rep.metadata.src_node_id}
      if admit(info) is not None:
        self.refused.add(rep.metadata.src_node_id)
        continue
      name = info["hospital"]
      if name in out:
        logging.warning("two nodes claim %r; keeping node %d", name, out[name]["node_id"])
        continue
      out[name] = info
      self.node_of[name] = rep.metadata.src_node_id  # the newest node of a hospital wins
    return out

  def send(self, kind: str, payloads: Mapping[str, dict[str, Any]], timeout: float
           ) -> dict[str, dict[str, Any] | str]:
    msgs = {h: Message(to_records({"header": self.header, **p}), dst_node_id=self.node_of[h],
                       message_type=kind) for h, p in payloads.items()}
    replies = exchange(self.grid, list(msgs.values()), timeout)
    # Message ids are set when pushed; the SuperLink's own error replies (node unavailable)
    # come from the SuperLink, not the node, so replies are matched by the message they answer.
    by_message = {m.metadata.message_id: h for h, m in msgs.items()}
    out: dict[str, dict[str, Any] | str] = {}
    for rep in replies:
      h = by_message.get(rep.metadata.reply_to_message_id)
      if h is None:
        continue
      if rep.has_error():
        what = ("node unavailable" if rep.error.code == ErrorCode.NODE_UNAVAILABLE
                else "node error")
        out[h] = f"{what}: {rep.error.reason}".splitlines()[0][:300]
        continue
      content = from_records(rep.content)
      out[h] = {**content.pop("result"), **content, "reply_bytes": payload_bytes(rep.content)}
    for h in payloads:
      out.setdefault(h, f"no reply within {timeout:g} s")
    return out


@app.main()
def main(grid: Grid, context: Context) -> None:
  cfg = job.config_from_json(open(str(context.run_config["job-config"])).read())
  coordinator = Coordinator(cfg)
  transport = FlowerTransport(grid, {"config": job.config_json(cfg)})
  coordinator.run(transport)
