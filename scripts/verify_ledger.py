r"""Verifies an identity ledger file: hash links, proofs of possession and registration bindings,
all signatures and co-signatures, the genesis rules every round follows, and the trust anchors
given (what the run published, the operator's registry, hospitals' receipts, the attestations
hospitals issued, hospitals' replicas of the ledger).

  python scripts/verify_ledger.py --ledger=runs/demo/ledger.jsonl \
      [--server_public_key=HEX] [--genesis_hash=HEX] [--registry=registry.jsonl] \
      [--receipts=runs/demo/receipts/cardiology] [--issued=runs/demo/receipts] \
      [--replica=runs/demo/receipts/cardiology/ledger.jsonl --replica=...] [--open] \
      [--backend=auto]

--issued reads every hospital's issued.jsonl under the directory and reports each dispute: an
attestation a hospital signed that the ledger records as missing, omits, or rejects for a reason
the attestation does not confirm (both sides' evidence printed). --replica compares a hospital's
copy with the ledger and names the first block where they differ. A ledger whose rules ask the
participants to co-sign must end with its closing block unless --open (a run in progress).

A ledger of a differentially private run also prints the privacy its last round block records.
Without anchors a ledger is only shown self-consistent (anyone can build one with fresh keys).
Prints the sampled hospitals that did not reply, one line per round and hospital.
Exit status: 0 valid; 1 invalid, with one line naming the first problem (bad block, mismatched
anchor, omitted or contradicted receipt, receipts of another ledger, a dispute, a diverging
replica, an unco-signed head), or a torn trailing line (an interrupted append: the
complete blocks before it are checked and reported, but the file is not a clean ledger); 2 a
missing or unreadable file (ledger, registry, receipts).
"""

from __future__ import annotations

import sys

from absl import app, flags

from fedlora_jax.ledger import BACKEND_NAMES, verify_ledger

_LEDGER = flags.DEFINE_string("ledger", None, "Path of the ledger (JSON lines).", required=True)
_SERVER_PK = flags.DEFINE_string("server_public_key", None,
                                 "Pinned server public key (hex), from the run's summary.json.")
_GENESIS = flags.DEFINE_string("genesis_hash", None, "Pinned genesis block hash (hex).")
_REGISTRY = flags.DEFINE_string("registry", None,
                                "Operator's registry file (JSON lines of registrations).")
_RECEIPTS = flags.DEFINE_string("receipts", None,
                                "Directory of receipts (*.json, searched recursively).")
_ISSUED = flags.DEFINE_string("issued", None, "Directory holding hospitals' issued.jsonl files "
                              "(searched recursively): report disputes.")
_REPLICAS = flags.DEFINE_multi_string("replica", [], "A hospital's copy of the ledger to compare.")
_OPEN = flags.DEFINE_bool("open", False, "A run in progress: its head may await co-signature.")
_BACKEND = flags.DEFINE_enum("backend", "auto", list(BACKEND_NAMES), "BLS backend.")


def main(argv: list[str]) -> int:
  del argv
  try:
    result = verify_ledger(_LEDGER.value, backend=_BACKEND.value,
                           server_public_key=_SERVER_PK.value, genesis_hash=_GENESIS.value,
                           registry=_REGISTRY.value, receipts=_RECEIPTS.value,
                           issued=_ISSUED.value, replicas=_REPLICAS.value,
                           allow_open=_OPEN.value)
  except (ValueError, OSError) as e:  # LedgerError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not result.ok:
    print(f"INVALID: block {result.first_bad_block}: {result.reason}")
    for dispute in result.disputes:
      print(f"dispute: {dispute}")
    return 1
  if result.torn_tail:
    print(f"TORN: a torn trailing line follows block {result.num_blocks - 1} (interrupted "
          f"append); the {result.num_blocks} complete blocks verify")
    return 1
  print(f"OK: {result.num_blocks} blocks verified"
        + (f", {result.receipts} receipts in the ledger" if _RECEIPTS.value else "")
        + (f", {len(_REPLICAS.value)} replicas agree" if _REPLICAS.value else "")
        + (", no dispute" if _ISSUED.value else "")
        + (" (open: no closing block yet)" if _OPEN.value and not result.closed else ""))
  for index, name, reason in result.refusals:
    print(f"block {index}: {name} refused to co-sign ({reason})")
  for round_no, name, reason in result.missing:
    print(f"round {round_no}: {name} missing ({reason})")
  p = result.privacy
  if p is not None:
    print(f"privacy spent: epsilon {p['epsilon']:.4g} at delta {p['delta']:.3g} per {p['unit']} "
          f"({p['accountant']} accountant, noise multiplier {p['noise_multiplier']:.4g}, clip "
          f"{p['clip']:.4g})")
  return 0


if __name__ == "__main__":
  app.run(main)
