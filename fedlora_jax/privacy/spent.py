"""The privacy spent so far, as a run records it after each round (before the round's block).

metrics.jsonl's "privacy" entry (`PrivacyMeter.after_round`):
    {level, unit, delta, noise_multiplier, clip_norm, accountant, epsilon: {hospital |
     "federation": eps}}
Under Poisson client sampling, "epsilon" is the amplified one (the budget: it holds against
whoever sees only the released adapters) and the entry adds "epsilon_participants_known":
{"federation": eps}, the unamplified one that holds against a reader of the published
participants (this file, the ledger), and "amplification" saying so (`amplification_entry`).
With `privacy.reproducible_noise` the noise came from the config seed: the entry then has
"guarantee": NO_GUARANTEE and the block's accountant name carries it too.
The ledger block's `privacy` field (`ledger_field`, see ledger/block.py `PRIVACY_KEYS`): the same
with one epsilon, the largest, i.e. the guarantee that every hospital's records (example level)
or every hospital (client level) has at least.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fedlora_jax.privacy.accounting import ClientAccountant, ExampleAccountant
from fedlora_jax.privacy.plan import LEVEL_NAMES
from fedlora_jax.privacy.secret import NO_GUARANTEE


@dataclasses.dataclass
class PrivacyMeter:
  """Counts each finished round in the accountant (on every process, so all agree on the budget)
  and describes the privacy spent.

  Attributes:
    accountant: the run's accountant. level: "example" | "client". delta: the reported delta.
    noise_multiplier: z in use. clip_norm: the configured C (adaptive clipping: the initial one).
    client_names: every client, in client-id order.
    reproducible_noise: the noise came from the config seed (research only: no guarantee).
  """

  accountant: ExampleAccountant | ClientAccountant
  level: str
  delta: float
  noise_multiplier: float
  clip_norm: float
  client_names: list[str]
  reproducible_noise: bool = False

  def clip_in_use(self, server_state: dict[str, Any]) -> float:
    """The clip norm of the round about to be aggregated: adaptive clipping keeps it in the
    server state (a replicated scalar), fixed clipping is the configured one."""
    adaptive = server_state.get("privacy") if isinstance(server_state, dict) else None
    if adaptive is None:
      return float(self.clip_norm)
    clip = adaptive["clip_norm"]
    return float(np.asarray(clip.addressable_data(0) if isinstance(clip, jax.Array) else clip))

  def after_round(self, clients: Sequence[str], clip_norm: float | None = None) -> dict[str, Any]:
    """Counts a finished round of `clients` (names); the record's "privacy" entry."""
    ids = [self.client_names.index(n) for n in clients]
    entry = {"level": self.level, "unit": LEVEL_NAMES[self.level], "delta": self.delta,
             "noise_multiplier": self.noise_multiplier,
             "clip_norm": float(self.clip_norm if clip_norm is None else clip_norm),
             "accountant": self.accountant.kind, "epsilon": self.accountant.after_round(ids)}
    entry.update(amplification_entry(self.accountant))
    if self.reproducible_noise:
      entry["guarantee"] = NO_GUARANTEE
    return entry

  def would_exceed(self, clients: Sequence[str]) -> bool:
    """Whether a round of `clients` (names) would pass the budget."""
    return self.accountant.would_exceed([self.client_names.index(n) for n in clients])


AMPLIFIED = ("amplified by Poisson client sampling (q={q:g}, at most {m} per round, server's "
             "secret): holds against whoever sees only the released adapters; a reader of the "
             "round participants (metrics.jsonl, the ledger) has epsilon_participants_known")


def amplification_entry(accountant: ExampleAccountant | ClientAccountant) -> dict[str, Any]:
  """{} without Poisson client sampling; else the unamplified epsilon and what each holds
  against (metrics' privacy entry and summary.json's)."""
  if not getattr(accountant, "amplified", False):
    return {}
  return {"epsilon_participants_known": accountant.unamplified(),
          "amplification": AMPLIFIED.format(q=accountant.sampling_rate,
                                            m=accountant.max_clients)}


def ledger_field(entry: dict[str, Any] | None) -> dict[str, Any] | None:
  """The block's `privacy` field from a record's "privacy" entry (None without DP)."""
  if entry is None:
    return None
  accountant = entry["accountant"]
  if "epsilon_participants_known" in entry:  # the ledger itself publishes the participants
    known = max(entry["epsilon_participants_known"].values())
    accountant = (f"{accountant} (Poisson-amplified; against a reader of this ledger's "
                  f"participants: epsilon {known:.4g})")
  if "guarantee" in entry:
    accountant = f"{accountant} ({entry['guarantee']})"
  return {"unit": entry["level"], "epsilon": max(entry["epsilon"].values()),
          "delta": entry["delta"], "noise_multiplier": entry["noise_multiplier"],
          "clip": entry["clip_norm"], "accountant": accountant}
