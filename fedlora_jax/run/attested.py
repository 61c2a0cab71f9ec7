"""The identity ledger in a run: every party's keystore, the server, the simulated hospitals.

Layout under the workdir:
  keys/server/server.key           the server's keystore (only `LedgerServer` reads it)
  keys/<hospital>/<hospital>.key   each hospital's keystore (only its `HospitalSigner` reads it);
                                   `ledger.keystores` may name another directory of keystores
  receipts/<hospital>/*.json       the server's receipts each hospital checked and kept
  ledger.jsonl

Keys come from the operating system's randomness, never from the config seed. With
`ledger.registry` the hospitals were enrolled beforehand (`scripts/enroll.py`) and the run
registers the registry's records; otherwise each simulated hospital enrols itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from fedlora_jax import ledger as L
from fedlora_jax.models import peft_tensors


def client_update(local_c: Any, c: int) -> dict[str, np.ndarray]:
  """Client c's adapter out of the [C, ...] tree of the round, as PEFT-named tensors (the
  encoding that is digested, as for the exported adapter file)."""
  return peft_tensors(jax.tree.map(lambda x: np.asarray(x[c]), local_c))


def base_tensors(base: Any) -> dict[str, np.ndarray]:
  """{HF tensor name: array} of base params (the tensors `save_hf_checkpoint` writes)."""
  flat = traverse_util.flatten_dict(jax.device_get(base))
  return {".".join(str(k) for k in path): np.asarray(v) for path, v in flat.items()}


def open_parties(workdir: str, client_names: Sequence[str], ledger_cfg: Any, *, label: str,
                 weighting: str) -> tuple[L.LedgerServer, dict[str, L.HospitalSigner]]:
  """The server (new ledger or resumed one) and each hospital's signer.

  `ledger_cfg` is the config's `ledger` section (backend, registry, keystores,
  max_samples_per_client).
  """
  backend = L.get_backend(ledger_cfg.backend)
  keystores = os.path.expanduser(ledger_cfg.keystores) or os.path.join(workdir, "keys")
  if ledger_cfg.registry:
    regs = L.load_registry(os.path.expanduser(ledger_cfg.registry), backend)
    missing = sorted(set(client_names) - {r.name for r in regs})
    if missing:
      raise L.LedgerError(f"ledger.registry {ledger_cfg.registry} has no registration for "
                          f"{missing}")
  else:
    regs = [L.enroll(n, os.path.join(keystores, n), backend) for n in client_names]
  server = L.LedgerServer.open_or_create(
      os.path.join(workdir, "ledger.jsonl"), os.path.join(workdir, "keys", "server"), regs,
      label=label, max_samples_per_client=ledger_cfg.max_samples_per_client,
      weighting=weighting, backend=backend)
  signers = {n: L.HospitalSigner(n, os.path.join(keystores, n),
                                 os.path.join(workdir, "receipts", n), server.server_public_key,
                                 backend) for n in client_names}
  registered = {r.name: r.pk for r in regs}
  wrong = [n for n, s in signers.items() if s.public_key != registered[n]]
  if wrong:
    raise L.LedgerError(f"keystores of {wrong} do not hold the registered keys")
  return server, signers


def attest_round(server: L.LedgerServer, signers: dict[str, L.HospitalSigner], round_no: int,
                 names: Sequence[str], digests: Sequence[bytes],
                 counts: Sequence[int]) -> L.RoundVerdict:
  """Each hospital signs its update's digest and true sample count; the server verifies them
  all and each hospital keeps its receipt. In simulation the server receives what was signed."""
  ctx = server.round_context(round_no)
  atts = [signers[n].attest(ctx, d, int(k)) for n, d, k in zip(names, digests, counts)]
  verdict = server.verify(round_no, list(zip(atts, digests)))
  for n, receipt in zip(names, verdict.receipts):
    signers[n].accept_receipt(receipt)
  return verdict
