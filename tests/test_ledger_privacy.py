"""The `privacy` field of round blocks: the epsilon spent so far, validated and never decreasing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedlora_jax.ledger import (
    Attestation, BlockError, Identity, Ledger, get_backend, tree_digest, verify_ledger,
)
from fedlora_jax.ledger.block import block_hash
from fedlora_jax.ledger.ledger import _seal
from tests.ledger_fixtures import create_ledger

REPO = Path(__file__).resolve().parents[1]
SEED = b"fedlora-jax ledger privacy tests"  # 32 bytes


def _spent(epsilon: float, **changes) -> dict:
  return {"unit": "example", "epsilon": epsilon, "delta": 1e-5, "noise_multiplier": 1.1,
          "clip": 1.0, "accountant": "pld", **changes}


def _digest(x: float) -> bytes:
  return tree_digest({"w": np.full((2,), x, np.float32)})


def _ledger(path: Path, privacy: list) -> tuple[Ledger, Identity, list[Identity]]:
  """One round per entry of `privacy`, two clients each."""
  backend = get_backend("auto")
  server = Identity.generate("server", SEED, backend)
  clients = [Identity.generate(f"h{i}", SEED, backend) for i in range(2)]
  dp = {} if privacy[0] is None else {"privacy_unit": "example", "delta": 1e-5,
                                      "noise_multiplier": 1.1}
  ledger = create_ledger(path, "privacy", server, clients, backend, **dp)
  for r, p in enumerate(privacy):
    _round(ledger, clients, r, p)
  return ledger, server, clients


def _round(ledger: Ledger, clients: list[Identity], r: int, privacy) -> dict:
  ctx = ledger.round_context(r)
  subs = [(Attestation.create(c, ctx, _digest(r + i), 10, ledger.backend), _digest(r + i))
          for i, c in enumerate(clients)]
  return ledger.append_round(r, ledger.verify_round(r, subs), _digest(100 + r), "fedavg",
                             privacy=privacy)


def test_blocks_carry_the_epsilon_and_the_verifier_reports_the_last(tmp_path: Path) -> None:
  ledger, _, _ = _ledger(tmp_path / "ledger.jsonl", [_spent(0.5), _spent(0.9), _spent(0.9)])
  assert [b["privacy"]["epsilon"] for b in Ledger.open(ledger.path).blocks[1:]] == [0.5, 0.9, 0.9]
  result = verify_ledger(ledger.path)
  assert result.ok and result.privacy == _spent(0.9)
  env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
  out = subprocess.run([sys.executable, str(REPO / "scripts" / "verify_ledger.py"),
                        f"--ledger={ledger.path}"], capture_output=True, text=True, env=env,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert ("privacy spent: epsilon 0.9 at delta 1e-05 per example (pld accountant, noise "
          "multiplier 1.1, clip 1)") in out.stdout


def test_a_run_without_dp_has_null_privacy(tmp_path: Path) -> None:
  ledger, _, _ = _ledger(tmp_path / "ledger.jsonl", [None, None])
  assert [b["privacy"] for b in ledger.blocks[1:]] == [None, None]
  assert verify_ledger(ledger.path).privacy is None


def test_a_tampered_epsilon_fails_verification(tmp_path: Path) -> None:
  ledger, server, _ = _ledger(tmp_path / "ledger.jsonl", [_spent(0.5), _spent(0.9)])
  lines = ledger.path.read_text().splitlines(keepends=True)
  # Edited in place: the hash breaks.
  ledger.path.write_text("".join(lines[:2]) + lines[2].replace('"epsilon":0.9', '"epsilon":0.7'))
  result = verify_ledger(ledger.path)
  assert (result.ok, result.first_bad_block) == (False, 2)
  assert "block hash does not match" in result.reason
  # Rehashed by someone without the server key: the signature breaks.
  block = json.loads(lines[2])
  block["privacy"]["epsilon"] = 0.7
  block["block_hash"] = block_hash(block)
  ledger.path.write_text("".join(lines[:2]) + json.dumps(block, sort_keys=True,
                                                         separators=(",", ":")) + "\n")
  result = verify_ledger(ledger.path)
  assert not result.ok and "server signature does not verify" in result.reason
  # Even signed by the server, an epsilon below the previous round's is refused.
  block = json.loads(lines[2])
  block["privacy"]["epsilon"] = 0.4
  del block["server_signature"], block["block_hash"]
  ledger.path.write_bytes("".join(lines[:2]).encode() + _seal(block, ledger.ledger_id, server,
                                                               ledger.backend))
  result = verify_ledger(ledger.path)
  assert (result.ok, result.first_bad_block) == (False, 2)
  assert "privacy epsilon 0.4 decreases from the previous round's 0.5" in result.reason


@pytest.mark.parametrize("privacy,reason", [
    (_spent(0.4), "decreases from the previous round's 0.5"),
    (None, "privacy field does not follow the genesis rules' privacy"),
    (_spent(0.6, unit="client"), "unit, delta or noise multiplier differs from the genesis"),
    (_spent(0.6, delta=1e-6), "unit, delta or noise multiplier differs from the genesis"),
    (_spent(0.6, noise_multiplier=0.5), "unit, delta or noise multiplier differs from the "),
    (_spent(0.6, unit="patient"), "unknown privacy unit 'patient'"),
    ({"epsilon": 0.6}, "malformed privacy field"),
    (_spent(-1.0), "malformed privacy epsilon -1.0"),
    (_spent(0.6, delta=0.0), "malformed privacy delta 0.0"),
    (_spent(0.6, clip=0.0), "malformed privacy noise multiplier or clip norm"),
    (_spent(0.6, noise_multiplier="1"), "malformed privacy noise multiplier or clip norm"),
    (_spent(0.6, accountant=""), "malformed privacy accountant name"),
])
def test_the_server_refuses_a_bad_privacy_field_and_writes_nothing(tmp_path: Path, privacy,
                                                                   reason) -> None:
  ledger, _, clients = _ledger(tmp_path / "ledger.jsonl", [_spent(0.5)])
  size = ledger.path.stat().st_size
  with pytest.raises(BlockError, match=f"block 2: .*{reason}"):
    _round(ledger, clients, 1, privacy)
  assert ledger.path.stat().st_size == size and verify_ledger(ledger.path).ok


def test_a_z_per_hospital_verifies_and_a_lowered_one_is_refused(tmp_path: Path) -> None:
  """privacy.calibration="per_client": the rules and every block record each hospital's z."""
  backend = get_backend("auto")
  server = Identity.generate("server", SEED, backend)
  clients = [Identity.generate(f"h{i}", SEED, backend) for i in range(2)]
  zs = [1.9, 0.7]
  ledger = create_ledger(tmp_path / "ledger.jsonl", "privacy", server, clients, backend,
                         privacy_unit="example", delta=1e-5, noise_multiplier=zs)
  _round(ledger, clients, 0, _spent(0.5, noise_multiplier=zs))
  assert verify_ledger(ledger.path).ok
  size = ledger.path.stat().st_size
  for bad, reason in (([1.9, 0.5], "differs from the genesis"),
                      ([], "malformed privacy noise multiplier"),
                      ([1.9, -0.7], "malformed privacy noise multiplier")):
    with pytest.raises(BlockError, match=f"block 2: .*{reason}"):
      _round(ledger, clients, 1, _spent(0.6, noise_multiplier=bad))
  assert ledger.path.stat().st_size == size and verify_ledger(ledger.path).ok
