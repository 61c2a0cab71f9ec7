"""A round's train replies as the server reads them, before any verification: who submitted
what (attestation, digest of the bytes received, update) and who is missing, with why."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from fedlora_jax import ledger as L
from fedlora_jax.sites import codec

Reply = dict[str, Any]

MISSING_PREFIXES = {"no node connected": "not_connected", "node unavailable": "unavailable",
                    "no reply within": "timeout", "node error": "node_error",
                    "malformed reply": "malformed_reply"}


@dataclasses.dataclass(frozen=True)
class Submissions:
  """The train replies of one round."""

  answered: dict[str, Reply]  # every hospital whose node replied, usable or not
  missing: dict[str, str]  # sampled hospitals without a usable reply: their one-line error
  signed: list[tuple[str, L.Attestation, bytes]]  # (hospital, attestation, digest received)
  updates: dict[str, Any]  # hospital -> its update as a LoRA tree


def collect(sampled: Sequence[str], replies: Mapping[str, Reply | str], like: Any
            ) -> Submissions:
  """The submissions of the `sampled` hospitals (sampling order) from their `replies`; `like`:
  the global adapter an update must match. A hospital without a reply, or with one that does not
  decode, is missing (then no receipt its node could not settle is queued for it)."""
  answered = {h: rep for h, rep in replies.items() if isinstance(rep, dict)}
  missing = {h: (replies.get(h) or "no node connected") for h in sampled if h not in answered}
  signed, updates = [], {}
  for h, rep in answered.items():
    try:
      update = codec.lora_from_arrays(rep["update"], like)
      # of the bytes received (update and client state), not of what was claimed
      digest = codec.submission_digest(rep["update"], rep["client_state_old"],
                                        rep["client_state_new"])
      attestation = L.Attestation.from_dict(rep.get("attestation"))
    except (codec.MessageError, L.LedgerError, KeyError, TypeError, ValueError) as e:
      missing[h] = f"malformed reply: {e}"
      continue
    updates[h] = update
    signed.append((h, attestation, digest))
  return Submissions(answered, missing, signed, updates)


def missing_reason(error: str) -> str:
  """The ledger's reason (`ledger.MISSING_REASONS`) for a hospital's one-line transport error."""
  for prefix, reason in MISSING_PREFIXES.items():
    if str(error).startswith(prefix):
      return reason
  return "node_error"
