"""Provenance of an exported adapter, the verify_ledger script, and the timing helper."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from fedlora_jax.ledger import (
    Attestation, Identity, Ledger, adapter_file_digest, backend_available, find_provenance,
    get_backend, time_round, tree_digest,
)
from tests.ledger_fixtures import create_ledger

REPO = Path(__file__).resolve().parents[1]
SEED = b"fedlora-jax ledger tool tests 32"


def _adapter(x: float) -> dict[str, np.ndarray]:
  return {"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": np.full((2, 4), x, "f4"),
          "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((4, 2), "f4")}


def _ledger(tmp_path: Path) -> tuple[Ledger, list[Identity]]:
  backend = get_backend("auto")
  server = Identity.generate("server", SEED, backend)
  clients = [Identity.generate(name, SEED, backend) for name in ("hosp-a", "hosp-b", "hosp-c")]
  ledger = create_ledger(tmp_path / "ledger.jsonl", "prov", server, clients, backend)
  for r, (participants, global_x) in enumerate([(clients[:2], 1.0), (clients[1:], 2.0),
                                                ([], 2.0)]):
    ctx = ledger.round_context(r)
    subs = [(Attestation.create(c, ctx, tree_digest(_adapter(r + i)), 100 * (i + 1), backend),
             tree_digest(_adapter(r + i))) for i, c in enumerate(participants)]
    ledger.append_round(r, ledger.verify_round(r, subs), tree_digest(_adapter(global_x)),
                        "fedavg")
  return ledger, clients


def test_find_provenance_of_exported_adapter(tmp_path: Path) -> None:
  ledger, (a, b, c) = _ledger(tmp_path)
  save_file(_adapter(2.0), str(tmp_path / "adapter_model.safetensors"))
  prov = find_provenance(ledger.path, adapter_file_digest(tmp_path / "adapter_model.safetensors"))
  # Round 2 had no valid client and repeats the digest; round 1 produced it.
  assert (prov.block_index, prov.round, prov.algorithm) == (2, 1, "fedavg")
  assert [(x.name, x.client_id, x.num_samples) for x in prov.contributors] == [
      ("hosp-b", b.id, 100), ("hosp-c", c.id, 200)]
  assert prov.contributors[0].update_digest == tree_digest(_adapter(1.0)).hex()
  assert find_provenance(ledger.path, tree_digest(_adapter(1.0)).hex()).round == 0
  assert find_provenance(ledger.path, tree_digest(_adapter(3.0))) is None


def _script(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
  return subprocess.run([sys.executable, str(REPO / "scripts" / "verify_ledger.py"), *args],
                        capture_output=True, text=True, env=env, timeout=120)


def test_verify_ledger_script_exit_codes(tmp_path: Path) -> None:
  ledger, _ = _ledger(tmp_path)
  ok = _script(f"--ledger={ledger.path}")
  assert ok.returncode == 0 and "OK: 4 blocks" in ok.stdout
  lines = ledger.path.read_text().splitlines(keepends=True)
  lines[2] = lines[2].replace('"num_samples":100', '"num_samples":101')
  ledger.path.write_text("".join(lines))
  bad = _script(f"--ledger={ledger.path}")
  assert bad.returncode == 1 and "INVALID: block 2: block hash does not match" in bad.stdout
  missing = _script(f"--ledger={tmp_path / 'nope.jsonl'}")
  assert missing.returncode == 2 and "no ledger file" in missing.stderr


def test_time_round_reports_each_phase() -> None:
  fast = [(n, 16) for n in ("arkworks", "blspy") if backend_available(n)]
  for name, n in [("py_ecc", 1), *fast]:
    timings = time_round(name, n)
    assert set(timings) == {"sign_s", "aggregate_s", "verify_s", "verify_cpu_s", "cosign_sign_s",
                            "cosign_aggregate_s", "cosign_verify_s", "cosign_verify_cpu_s"}
    assert all(t > 0 for t in timings.values())
