"""BLS identity ledger: identities with proof of possession, attested rounds, a hash chain.

Typical server flow::

  ledger = Ledger.create(path, "run-1", server, clients=[...])        # genesis, PoPs checked
  ctx = ledger.round_context(r)                                        # sent to clients
  att = Attestation.create(client, ctx, tree_digest(update), n)       # on each client
  accepted, rejected = ledger.verify_round(r, [(att, tree_digest(received)), ...])
  ledger.append_round(r, accepted, rejected, tree_digest(new_global), "fedavg")
  verify_ledger(path).ok; find_provenance(path, adapter_file_digest(adapter))
"""

from fedlora_jax.ledger.attestation import (
    Attestation, Registration, RoundContext, attestation_message, server_message,
)
from fedlora_jax.ledger.block import REJECT_REASONS, block_hash
from fedlora_jax.ledger.bls import (
    BACKEND_NAMES, Backend, backend_available, get_backend, key_gen,
)
from fedlora_jax.ledger.digest import adapter_file_digest, tree_digest
from fedlora_jax.ledger.errors import BlockError, KeystoreError, LedgerError, RegistrationError
from fedlora_jax.ledger.identity import Identity, identity_id, load_keystore
from fedlora_jax.ledger.ledger import Ledger, Rejection, RoundVerdict
from fedlora_jax.ledger.provenance import Contributor, Provenance, find_provenance
from fedlora_jax.ledger.timing import time_round
from fedlora_jax.ledger.verify import VerifyResult, verify_ledger

__all__ = [
    "Attestation", "BACKEND_NAMES", "Backend", "BlockError", "Contributor", "Identity",
    "KeystoreError", "Ledger", "LedgerError", "Provenance", "REJECT_REASONS", "Registration",
    "RegistrationError", "Rejection", "RoundContext", "RoundVerdict", "VerifyResult",
    "adapter_file_digest", "backend_available", "attestation_message", "block_hash",
    "find_provenance", "get_backend", "identity_id", "key_gen", "load_keystore",
    "server_message", "time_round", "tree_digest", "verify_ledger",
]
