"""Example-level DP-SGD at a hospital in sites mode: the hospital, not the server, owns the noise.

The server's train message fixes the plan (`Coordinator._example_dp_task`): noise multiplier z,
the Poisson batches' fixed rows B_max and the run's public nonce. The hospital
  * checks z against its replica of the ledger: the genesis, signed by the server key this node
    pinned, of the round's ledger, must record {"unit": "example", "delta", "noise_multiplier"}
    with the job's delta and this z (`check_plan`); anything else is refused;
  * draws its Poisson batches and noise from its own `DpSecret` (`<keystore>/dp_secret`, next to
    its BLS key, created from the OS at its first DP round) bound to the run's nonce, exactly as
    the simulation's `DpKeys` does: the server knows the nonce, never the keys;
  * keeps a record of every release (`<state-dir>/dp_releases.jsonl`: run nonce, round, ledger,
    the digest of what it trained on and the release's accounting) and refuses to train a
    (nonce, round) again on other inputs: the same noise on two different inputs would let
    their difference cancel it. A repeat on the same inputs (a resumed server) gives the same
    update, no new release;
  * with its own policy (node config `max-epsilon`, `dp-delta`) accounts for itself: every
    release of every job so far plus this one must stay within its max epsilon, or the release
    is refused. The server sets the job (z, batch, steps, rounds, even the genesis rules), so
    this is the guarantee a hospital holds whatever the server sends.
A resume of a run this hospital already released in needs the secret it started with.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import ml_collections

from fedlora_jax.ledger.chain import ChainState
from fedlora_jax.privacy.accounting import poisson_max_batch, releases_epsilon
from fedlora_jax.privacy.dp_sgd import ExampleDP
from fedlora_jax.privacy.secret import DpSecret
from fedlora_jax.run.dp_keys import DpKeys

RELEASES_FILE = "dp_releases.jsonl"


class PlanRefused(ValueError):
  """A DP-SGD plan the hospital will not run (z not the genesis rules', a replayed round)."""


class HospitalDp:
  """One hospital's DP-SGD side: its secret, the plan check and its release record.

  `secret` is read from the keystore on first use; tests may set a reproducible one.
  """

  def __init__(self, keystore: str, state_dir: str, cfg: ml_collections.ConfigDict,
               server_public_key: bytes, train_size: int, max_epsilon: float | None = None,
               delta: float = 1e-5):
    self.keystore, self.cfg = keystore, cfg
    self.server_public_key = server_public_key
    self.train_size = train_size
    self.max_epsilon, self.delta = max_epsilon, delta  # the hospital's own policy
    self.releases_path = os.path.join(state_dir, RELEASES_FILE)
    self.secret: DpSecret | None = None

  def check_plan(self, plan: Mapping[str, Any], genesis: ChainState | None,
                 ledger_id: str) -> ExampleDP:
    """The `ExampleDP` of the server's `plan` when the genesis rules record its z (else
    `PlanRefused`, one line); `genesis`: this node's verified replica state."""
    z, b_max = float(plan["noise_multiplier"]), int(plan["max_batch_size"])
    if genesis is None or genesis.server.pk != self.server_public_key:
      raise PlanRefused("DP-SGD plan refused: no genesis signed by the pinned server key")
    if genesis.ledger_id != ledger_id:
      raise PlanRefused(f"DP-SGD plan refused: the round's ledger {ledger_id!r} is not the "
                        f"replica's {genesis.ledger_id!r}")
    want = {"unit": "example", "delta": float(self.cfg.privacy.delta), "noise_multiplier": z}
    if genesis.rules.get("privacy") != want:
      raise PlanRefused(f"DP-SGD plan refused: noise multiplier {z:g} at delta "
                        f"{self.cfg.privacy.delta:g} is not the genesis rules' "
                        f"{genesis.rules.get('privacy')}")
    need = poisson_max_batch([self.train_size], self.cfg.fed.batch_size)
    if b_max < need:
      raise PlanRefused(f"DP-SGD plan refused: {b_max} batch rows, this hospital's Poisson "
                        f"batches need {need}")
    return ExampleDP(z, self.cfg.privacy.clip_norm, self.cfg.fed.batch_size)

  def keys(self, client_id: int, run_nonce: str) -> DpKeys:
    """This hospital's keys for the run `run_nonce` (the simulation's derivation)."""
    if self.secret is None:
      resumed = any(r["run_nonce"] == run_nonce for r in self._releases())
      self.secret = (DpSecret.load(self.keystore) if resumed
                     else DpSecret.load_or_create(self.keystore))
    return DpKeys("example", run_nonce, {int(client_id): self.secret})

  def _releases(self) -> list[dict[str, Any]]:
    if not os.path.exists(self.releases_path):
      return []
    with open(self.releases_path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def spent(self) -> float:
    """This hospital's epsilon at its policy's delta over every release it recorded."""
    return releases_epsilon(self._releases(), self.delta)

  def check_release(self, run_nonce: str, round_no: int, ledger_id: str, inputs: str,
                    example_dp: ExampleDP, max_batch_size: int) -> None:
    """Notes the release of round `round_no` of `run_nonce` on `inputs` (a digest) before it
    is made; `PlanRefused` when that round's keys were already used on other inputs, or when
    the release would take this hospital past its own max epsilon."""
    entry = {"run_nonce": run_nonce, "round": int(round_no), "ledger_id": ledger_id,
             "inputs": inputs, "dataset_size": self.train_size,
             "expected_batch_size": float(example_dp.expected_batch_size),
             "max_batch_size": int(max_batch_size),
             "noise_multiplier": float(example_dp.noise_multiplier),
             "steps": int(self.cfg.fed.local_steps)}
    released = self._releases()
    for r in released:
      if (r["run_nonce"], r["round"]) == (run_nonce, round_no):
        if r != entry:
          raise PlanRefused(f"DP-SGD round {round_no} of run {run_nonce[:8]}... was already "
                            "released on other inputs: its noise would cancel")
        return
    if self.max_epsilon is not None:
      after = releases_epsilon([*released, entry], self.delta)
      if after > self.max_epsilon:
        raise PlanRefused(f"DP-SGD round {round_no} refused: it would take this hospital's "
                          f"records to epsilon {after:.3g} (delta {self.delta:g}) over its "
                          f"{len(released)} earlier release(s), past its max-epsilon "
                          f"{self.max_epsilon:g}")
    with open(self.releases_path, "a") as f:
      f.write(json.dumps(entry, sort_keys=True) + "\n")
      f.flush()
      os.fsync(f.fileno())
