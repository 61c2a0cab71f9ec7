"""BLS identity ledger: identities with proof of possession, attested rounds, a hash chain.

Each party holds its own keystore. A run (see `fedlora_jax/run/gates.py`)::

  reg = enroll("cardiology", keystore_dir, num_samples)        # hospital: key, PoP, declared size
  rules = make_rules(algorithm="fedavg", clients_per_round=3)  # the job's rules, fixed in genesis
  server = LedgerServer.open_or_create(path, server_keystore, [reg, ...], label="run", rules=rules)
  signer = HospitalSigner("cardiology", keystore_dir, receipts_dir, server.server_public_key)
  ctx = server.round_context(r)                                 # sent to hospitals
  att = signer.attest(ctx, tree_digest(update), num_samples)    # on each hospital
  verdict = server.verify(r, [(att, tree_digest(received)), ...])
  signer.accept_receipt(verdict.receipts[0])                    # hospital keeps the evidence
  block = server.record(r, verdict, tree_digest(new_global), "fedavg")  # weights per the rules
  cosig = signer.cosign(server.blocks_since(len(signer.replica)), tree_digest(new_global))
  server.add_cosignatures([cosig, ...])                         # goes into the next block
  ...
  server.ledger.close()                                         # after the last round
  verify_ledger(path, server_public_key=..., genesis_hash=..., receipts=receipts_dir,
                issued=receipts_root, replicas=[signer.replica.path]).ok
"""

from fedlora_jax.ledger.attestation import (
    ACCEPTED, Attestation, Receipt, Registration, RoundContext, attestation_message,
    cosign_message, membership_message, receipt_message, server_message,
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
from fedlora_jax.ledger.ledger import CoSign, Ledger, Rejection, RoundVerdict
from fedlora_jax.ledger.provenance import Contributor, Provenance, find_provenance
from fedlora_jax.ledger.registry import load_registry, registry_line
from fedlora_jax.ledger.replica import Replica
from fedlora_jax.ledger.rules import applied_weights, make_rules
from fedlora_jax.ledger.server import Admission, LedgerServer, round_outcome
from fedlora_jax.ledger.signer import HospitalSigner, enroll, load_issued, load_receipts
from fedlora_jax.ledger.timing import time_round
from fedlora_jax.ledger.verify import VerifyResult, verify_ledger

__all__ = [
    "ACCEPTED", "Admission", "Attestation", "BACKEND_NAMES", "Backend", "BlockError", "CoSign", "Contributor",
    "Replica", "applied_weights", "base_residual", "cosign_message", "load_issued", "make_rules",
    "membership_message",
    "HospitalSigner", "Identity", "KeystoreError", "Ledger", "LedgerError", "LedgerServer",
    "MISSING_REASONS",
    "Provenance", "REJECT_REASONS", "Receipt", "Registration", "RegistrationError", "Rejection",
    "RoundContext", "RoundVerdict", "VerifyResult", "adapter_file_digest", "attestation_message",
    "backend_available", "block_hash", "enroll", "find_provenance", "get_backend", "identity_id",
    "key_gen", "load_keystore", "load_receipts", "load_registry", "receipt_message",
    "registry_line", "residual_digest", "round_outcome", "server_message", "time_round", "tree_digest",
    "verify_ledger", "weights_of",
]
