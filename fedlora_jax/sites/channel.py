"""The local channel between a hospital's Flower ClientApp (a fresh process per message) and its
long-lived worker: a Unix domain socket in the node's state directory that only the hospital's
own account can open (directory 0700, socket 0600, and the peer's uid checked with SO_PEERCRED).

One connection per message. Each side sends two length-prefixed frames (8-byte big-endian
length, then the bytes): a JSON header and a body. The request's header is {"kind": message
type}, its body the message's RecordDict in Flower's own protobuf encoding; the reply's header is
{"ok": true} with the reply's RecordDict, or {"ok": false, "error": one line} with an empty body.

Imports no JAX: the ClientApp that uses it starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time
from typing import Any, Iterator

_LENGTH = struct.Struct(">Q")
_PEERCRED = struct.Struct("3i")  # pid, uid, gid
MAX_FRAME = 1 << 40  # a sanity bound on a length prefix read from the peer
SOCKET_DIR, SOCKET_NAME = "worker", "sock"


class ChannelError(ConnectionError):
  """The worker cannot be reached, or the other side broke the framing."""


def socket_path(state_dir: str) -> str:
  """`<state-dir>/worker/sock`: the worker's socket (in a directory of its own, mode 0700)."""
  return os.path.join(os.path.abspath(state_dir), SOCKET_DIR, SOCKET_NAME)


@contextlib.contextmanager
def _address(path: str) -> Iterator[str]:
  """`path`, or `/proc/self/fd/<dir fd>/<name>` when `path` is longer than a socket address may
  be (108 bytes on Linux)."""
  if len(os.fsencode(path)) < 100:
    yield path
    return
  fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
  try:
    yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
  finally:
    os.close(fd)


def send_frames(sock: socket.socket, header: dict[str, Any], body: bytes) -> None:
  data = json.dumps(header, sort_keys=True).encode()
  sock.sendall(_LENGTH.pack(len(data)) + data)
  sock.sendall(_LENGTH.pack(len(body)))
  sock.sendall(body)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
  buf = bytearray(n)
  view, got = memoryview(buf), 0
  while got < n:
    k = sock.recv_into(view[got:], n - got)
    if k == 0:
      raise ChannelError(f"connection closed after {got} of {n} bytes")
    got += k
  return bytes(buf)


def _recv_frame(sock: socket.socket) -> bytes:
  (n,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
  if n > MAX_FRAME:
    raise ChannelError(f"frame of {n} bytes announced")
  return _recv_exact(sock, n)


def recv_frames(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
  try:
    header = json.loads(_recv_frame(sock))
  except ValueError as e:
    raise ChannelError(f"malformed header ({e})") from e
  if not isinstance(header, dict):
    raise ChannelError("malformed header (not an object)")
  return header, _recv_frame(sock)


def peer_uid(sock: socket.socket) -> int:
  """The uid of the process at the other end of a connected Unix socket (Linux)."""
  return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                          _PEERCRED.size))[1]


def request(state_dir: str, kind: str, body: bytes) -> bytes:
  """Sends one message to the worker of the node at `state_dir`; its reply body. Raises
  ChannelError (worker down, not this account's, broken framing) or RuntimeError (the worker
  answered with an error), each with one line."""
  path = socket_path(state_dir)
  with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
    try:
      with _address(path) as address:
        sock.connect(address)
    except OSError as e:
      raise ChannelError(f"hospital worker not running at {path} ({e.strerror or e})") from e
    if peer_uid(sock) != os.getuid():
      raise ChannelError(f"the process at {path} does not run under this account")
    send_frames(sock, {"kind": kind}, body)
    header, reply = recv_frames(sock)
  if not header.get("ok"):
    raise RuntimeError(f"hospital worker: {header.get('error', 'no reason given')}")
  return reply


def listen(state_dir: str) -> socket.socket:
  """A listening socket at `socket_path(state_dir)` (directory 0700, socket 0600). Refuses when
  a worker already answers there; a stale socket file (a worker that died) is replaced."""
  path = socket_path(state_dir)
  os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
  os.chmod(os.path.dirname(path), 0o700)
  if os.path.exists(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe, _address(path) as address:
      if probe.connect_ex(address) == 0:
        raise ChannelError(f"a worker already listens at {path}")
    os.unlink(path)
  sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  old = os.umask(0o177)  # the socket file is created 0600, never briefly wider
  try:
    with _address(path) as address:
      sock.bind(address)
  finally:
    os.umask(old)
  sock.listen(8)
  return sock


def wait_ready(state_dir: str, timeout: float, alive=lambda: True) -> None:
  """Waits until the worker at `state_dir` accepts connections (`alive()` False: it exited)."""
  path, deadline = socket_path(state_dir), time.time() + timeout
  while time.time() < deadline:
    if not alive():
      raise ChannelError(f"the hospital worker for {state_dir} exited before listening")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
      if os.path.exists(path):
        with _address(path) as address:
          if probe.connect_ex(address) == 0:
            return
    time.sleep(0.2)
  raise ChannelError(f"the hospital worker did not listen at {path} within {timeout:g} s")
