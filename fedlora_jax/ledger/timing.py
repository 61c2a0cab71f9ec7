"""Timing of one attested round: every client signs, the server aggregates and verifies; then
every client co-signs the round's block and the co-signature is aggregated and verified (what
each next block costs a verifier)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from fedlora_jax.ledger.attestation import attestation_message, cosign_message
from fedlora_jax.ledger.bls import Backend, key_gen, resolve_backend
from fedlora_jax.ledger.identity import identity_id


def time_round(backend: Backend | str | None, n_clients: int) -> dict[str, float]:
  """Seconds to sign `n_clients` distinct attestations (total), aggregate them, and
  AggregateVerify the aggregate once (wall clock; `verify_cpu_s`: this process's CPU time for
  the verification, less sensitive to other jobs on a shared machine); then the same for the
  co-signature of one block hash (`cosign_*`: every client signs the same message, verified with
  FastAggregateVerify). The compiled backends cache decoded public keys (as for a server's
  registered clients), so their first call also pays key validation."""
  backend = resolve_backend(backend)
  sks = [key_gen(hashlib.sha256(b"time_round/%d" % i).digest()) for i in range(n_clients)]
  pks = [backend.sk_to_pk(sk) for sk in sks]
  prev = "00" * 32
  messages = [
      attestation_message("timing", 0, prev, identity_id(pk),
                          hashlib.sha256(pk).hexdigest(), 100 + i)
      for i, pk in enumerate(pks)
  ]
  sign, aggregate, verify, verify_cpu, sig = _timed(
      backend, sks, messages, lambda agg: backend.aggregate_verify(pks, messages, agg))
  if sig is None:
    raise AssertionError(f"{backend.name}: aggregate of {n_clients} signatures does not verify")
  block = cosign_message("timing", 1, hashlib.sha256(sig).hexdigest())
  c_sign, c_aggregate, c_verify, c_verify_cpu, cosig = _timed(
      backend, sks, [block] * len(sks), lambda agg: backend.fast_aggregate_verify(pks, block, agg))
  if cosig is None:
    raise AssertionError(f"{backend.name}: co-signature of {n_clients} clients does not verify")
  return {"sign_s": sign, "aggregate_s": aggregate, "verify_s": verify, "verify_cpu_s": verify_cpu,
          "cosign_sign_s": c_sign, "cosign_aggregate_s": c_aggregate, "cosign_verify_s": c_verify,
          "cosign_verify_cpu_s": c_verify_cpu}


def _timed(backend: Backend, sks: list[bytes], messages: list[bytes],
           verify: Callable[[bytes], bool]) -> tuple[float, float, float, float, bytes | None]:
  """(sign s, aggregate s, verify s, verify CPU s, the aggregate or None when it does not
  verify): every key signs its message, the signatures are aggregated, `verify` checks it."""
  t0 = time.perf_counter()
  sigs = [backend.sign(sk, m) for sk, m in zip(sks, messages)]
  t1 = time.perf_counter()
  aggregate = backend.aggregate(sigs)
  t2, c2 = time.perf_counter(), time.process_time()
  ok = verify(aggregate)
  t3, c3 = time.perf_counter(), time.process_time()
  return t1 - t0, t2 - t1, t3 - t2, c3 - c2, aggregate if ok else None
