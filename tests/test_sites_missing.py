"""The ledger's `missing` field (sampled hospitals that did not reply): written by the server,
checked by chain verification, shown by scripts/verify_ledger.py; ledgers of format version 2
are refused by name."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedlora_jax.ledger import (
    Attestation, BlockError, Identity, Ledger, LedgerError, get_backend, tree_digest,
    verify_ledger,
)
from fedlora_jax.ledger import block as blk
from fedlora_jax.ledger import chain
from fedlora_jax.sites.submissions import missing_reason
from tests.ledger_fixtures import create_ledger

REPO = Path(__file__).resolve().parents[1]
SEED = b"fedlora-jax sites missing tests!"


def _parties():
  backend = get_backend("auto")
  server = Identity.generate("server", SEED, backend)
  clients = [Identity.generate(n, SEED, backend) for n in ("hosp-a", "hosp-b", "hosp-c")]
  return backend, server, clients


def _round(ledger, backend, r, participants, missing):
  ctx = ledger.round_context(r)
  digest = tree_digest({"x": [float(r)]})
  subs = [(Attestation.create(c, ctx, digest, 10, backend), digest) for c in participants]
  return ledger.append_round(r, ledger.verify_round(r, subs), digest, "fedavg", missing=missing)


def test_missing_is_recorded_verified_and_shown(tmp_path):
  backend, server, (a, b, c) = _parties()
  path = tmp_path / "ledger.jsonl"
  ledger = create_ledger(path, "missing", server, [a, b, c], backend)
  block = _round(ledger, backend, 1, [a, b], [(c.id, "timeout")])
  assert block["missing"] == [{"client_id": c.id, "reason": "timeout"}]
  assert _round(ledger, backend, 2, [a, b, c], [])["missing"] == []
  result = verify_ledger(path, server_public_key=server.pk)
  assert result.ok and result.missing == ((1, "hosp-c", "timeout"),)
  out = subprocess.run([sys.executable, str(REPO / "scripts" / "verify_ledger.py"),
                        f"--ledger={path}"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == ["OK: 3 blocks verified", "round 1: hosp-c missing (timeout)"]
  # An edited missing entry breaks the server's signature (the hash is recomputed to match).
  lines = path.read_bytes().split(b"\n")
  edited = json.loads(lines[1])
  edited["missing"] = []
  edited["block_hash"] = blk.block_hash(edited)
  lines[1] = blk.encode_line(edited)[:-1]
  path.write_bytes(b"\n".join(lines))
  result = verify_ledger(path)
  assert (result.ok, result.first_bad_block, result.reason) == (
      False, 1, "server signature does not verify")


@pytest.mark.parametrize("missing,reason", [
    (lambda a, c: [("ab" * 32, "timeout")], "missing client 'abab"),
    (lambda a, c: [(a.id, "timeout")], "missing client 'hosp-a' is also a participant"),
    (lambda a, c: [(c.id, "timeout"), (c.id, "node_error")], "listed twice"),
    (lambda a, c: [(c.id, "bored")], "unknown missing reason 'bored'"),
])
def test_bad_missing_entries_are_refused(tmp_path, missing, reason):
  backend, server, (a, b, c) = _parties()
  ledger = create_ledger(tmp_path / "ledger.jsonl", "missing", server, [a, b, c],
                         backend)
  with pytest.raises(BlockError, match=reason):
    _round(ledger, backend, 1, [a], missing(a, c))
  assert len(Ledger.open(tmp_path / "ledger.jsonl").blocks) == 1  # nothing appended


def test_format_version_2_is_refused_by_name(tmp_path, monkeypatch):
  backend, server, clients = _parties()
  with monkeypatch.context() as m:  # a ledger as the previous format wrote it
    m.setattr(blk, "FORMAT_VERSION", 2)
    m.setattr(chain, "FORMAT_VERSION", 2)
    create_ledger(tmp_path / "v2.jsonl", "old", server, clients, backend)
  result = verify_ledger(tmp_path / "v2.jsonl")
  assert (result.ok, result.first_bad_block) == (False, 0)
  assert result.reason == ("ledger format version 2 is not supported (this code reads format "
                           f"version {blk.FORMAT_VERSION} only)")
  with pytest.raises(BlockError, match="format version 2"):
    Ledger.open(tmp_path / "v2.jsonl")


def test_transport_errors_map_to_missing_reasons():
  assert [missing_reason(e) for e in ("no node connected", "node unavailable: Error: Node",
                                      "no reply within 150 s", "node error: killed",
                                      "malformed reply: shape", "something else")] == [
      "not_connected", "unavailable", "timeout", "node_error", "malformed_reply", "node_error"]


def test_receipts_of_a_recorded_round_are_the_ones_first_issued(tmp_path):
  """What a server that crashed before delivering receipts sends again: the same receipts (BLS
  signing is deterministic), for accepted and rejected submissions alike."""
  backend, server, (a, b, c) = _parties()
  ledger = create_ledger(tmp_path / "ledger.jsonl", "receipts", server, [a, b, c],
                         backend)
  ctx = ledger.round_context(1)
  digest = tree_digest({"x": [1.0]})
  good = Attestation.create(a, ctx, digest, 10, backend)
  forged = Attestation.create(b, ctx, digest, 10, backend)
  forged = Attestation(**{**forged.__dict__, "signature": good.signature})
  verdict = ledger.verify_round(1, [(good, digest), (forged, digest)])
  ledger.append_round(1, verdict, digest, "fedavg", missing=[(c.id, "unavailable")])
  again = Ledger.open(tmp_path / "ledger.jsonl", server).receipts_of(1)
  assert [r.verdict for r in again] == ["accepted", "bad_signature"]
  assert again == list(verdict.receipts)
  with pytest.raises(LedgerError, match="no block for round 2"):
    ledger.receipts_of(2)
