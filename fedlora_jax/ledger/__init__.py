"""BLS identity ledger: identities with proof of possession, attested rounds, a hash chain.

Each party holds its own keystore. A run (see `fedlora_jax/run/gates.py`)::

  reg = enroll("cardiology", keystore_dir)                     # hospital: key + (pk, PoP)
  server = LedgerServer.open_or_create(path, server_keystore, [reg, ...], label="run")
  signer = HospitalSigner("cardiology", keystore_dir, receipts_dir, server.server_public_key)
  ctx = server.round_context(r)                                 # sent to hospitals
  att = signer.attest(ctx, tree_digest(update), num_samples)    # on each hospital
  verdict = server.verify(r, [(att, tree_digest(received)), ...])
  signer.accept_receipt(verdict.receipts[0])                    # hospital keeps the evidence
  server.record(r, verdict, tree_digest(new_global), "fedavg")  # weights = signed counts
  verify_ledger(path, server_public_key=..., genesis_hash=..., receipts=receipts_dir).ok
"""

from fedlora_jax.ledger.attestation import (
    ACCEPTED, Attestation, Receipt, Registration, RoundContext, attestation_message,
    receipt_message, server_message,
)
from fedlora_jax.ledger.block import MISSING_REASONS, REJECT_REASONS, block_hash, weights_of
from fedlora_jax.ledger.bls import (
    BACKEND_NAMES, Backend, backend_available, get_backend, key_gen,
)
from fedlora_jax.ledger.digest import (
    adapter_file_digest, base_residual, residual_digest, tree_digest,
)
from fedlora_jax.ledger.errors import BlockError, KeystoreError, LedgerError, RegistrationError
from fedlora_jax.ledger.identity import Identity, identity_id, load_keystore
from fedlora_jax.ledger.ledger import Ledger, Rejection, RoundVerdict
from fedlora_jax.ledger.provenance import Contributor, Provenance, find_provenance
from fedlora_jax.ledger.registry import load_registry, registry_line
from fedlora_jax.ledger.server import LedgerServer
from fedlora_jax.ledger.signer import HospitalSigner, enroll, load_receipts
from fedlora_jax.ledger.timing import time_round
from fedlora_jax.ledger.verify import VerifyResult, verify_ledger

__all__ = [
    "ACCEPTED", "Attestation", "BACKEND_NAMES", "Backend", "BlockError", "Contributor", "base_residual",
    "HospitalSigner", "Identity", "KeystoreError", "Ledger", "LedgerError", "LedgerServer",
    "MISSING_REASONS",
    "Provenance", "REJECT_REASONS", "Receipt", "Registration", "RegistrationError", "Rejection",
    "RoundContext", "RoundVerdict", "VerifyResult", "adapter_file_digest", "attestation_message",
    "backend_available", "block_hash", "enroll", "find_provenance", "get_backend", "identity_id",
    "key_gen", "load_keystore", "load_receipts", "load_registry", "receipt_message",
    "registry_line", "residual_digest", "server_message", "time_round", "tree_digest",
    "verify_ledger", "weights_of",
]
