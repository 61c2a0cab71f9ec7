"""Each party's secret DP randomness in a run, and the per-round keys the engine needs.

Hospitals (the clients this process holds) draw their DP-SGD noise and Poisson batches from their
own `DpSecret` in `<keystores>/<hospital>/dp_secret`, next to their BLS key; the server (process 0)
draws DP-FedAvg's noise (and, with Poisson client sampling, each round's participants) from
`<workdir>/keys/server/dp_secret`. A keystore outlives a run (an
enrolled hospital keeps it), so every key also binds the run's nonce (public, from the OS at the
run's start, kept in privacy.json): two runs never share noise or batches, even on the same data
with the same keystore, while a resume gets its own run's keys back. The round's program runs on
every process, so the server's per-round key reaches the other processes (one organisation in a
pod); a hospital's keys never leave the process that holds it. With `privacy.reproducible_noise`
every secret derives from the config seed instead (research only: no privacy guarantee).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from fedlora_jax.federated.round import PAD
from fedlora_jax.federated.sampling import poisson_clients
from fedlora_jax.privacy.secret import DpSecret
from fedlora_jax.run import multihost

SGD_NOISE = "dp-sgd noise"
SGD_SAMPLING = "dp-sgd poisson sampling"
FEDAVG_NOISE = "dp-fedavg noise"
FEDAVG_SAMPLING = "dp-fedavg poisson client sampling"


def keystore_root(cfg, workdir: str) -> str:
  """The directory of the hospitals' keystores (`ledger.keystores`, default `<workdir>/keys`)."""
  return os.path.expanduser(cfg.ledger.keystores) or os.path.join(workdir, "keys")


def new_run_nonce() -> str:
  """A fresh public run nonce (hex), from the OS."""
  return os.urandom(16).hex()


class DpKeys:
  """The DP secrets this process holds and the keys of each round.

  Args:
    level: `privacy.level` ("none" | "example" | "client").
    run_nonce: the run's nonce (hex; privacy.json).
    hospitals: {client id: that hospital's secret} for the clients on this process (example).
    server: the server's secret (client level, process 0 only).
  """

  def __init__(self, level: str = "none", run_nonce: str = "",
               hospitals: dict[int, DpSecret] | None = None, server: DpSecret | None = None):
    self.level = level
    self.run_nonce = run_nonce
    self.hospitals = hospitals or {}
    self.server = server

  @classmethod
  def open(cls, cfg, workdir: str, names: Sequence[str], local_clients: Sequence[int], *,
           run_nonce: str, resuming: bool) -> DpKeys:
    """The secrets of the parties on this process for `privacy.level`: created from the OS at a
    fresh start; a resume requires the ones it started with (else its re-run rounds would be
    released again with other noise, unaccounted)."""
    level, seeded = cfg.privacy.level, cfg.privacy.reproducible_noise

    def secret(party: str, directory: str) -> DpSecret:
      if seeded:
        return DpSecret.reproducible(cfg.seed, party)
      return DpSecret.load(directory) if resuming else DpSecret.load_or_create(directory)

    root = keystore_root(cfg, workdir)
    hospitals = ({c: secret(names[c], os.path.join(root, names[c])) for c in local_clients}
                 if level == "example" else {})
    server = (secret("server", os.path.join(workdir, "keys", "server"))
              if level == "client" and multihost.is_writer() else None)
    return cls(level, run_nonce, hospitals, server)

  def _purpose(self, what: str) -> str:
    return f"{what}/{self.run_nonce}"

  def _hospital(self, client_id: int) -> DpSecret:
    if int(client_id) not in self.hospitals:
      raise ValueError(f"client {client_id}'s DP secret is not held by this process")
    return self.hospitals[int(client_id)]

  def sampling_rngs(self, client_ids: Sequence[int], round_idx: int
                    ) -> list[np.random.Generator]:
    """Each (local) client's secret Poisson-sampling generator for round `round_idx`."""
    return [self._hospital(c).numpy_rng(self._purpose(SGD_SAMPLING), round_idx)
            for c in client_ids]

  def noise_key(self, client_id: int, round_idx: int) -> np.ndarray:
    """uint32 [2]: a (local) client's secret DP-SGD noise key of round `round_idx` (zeros for a
    padding slot)."""
    if client_id == PAD:
      return np.zeros((2,), np.uint32)
    return self._hospital(client_id).jax_key(self._purpose(SGD_NOISE), round_idx)

  def server_noise_key(self, round_idx: int) -> np.ndarray | None:
    """uint32 [2]: the server's DP-FedAvg key of round `round_idx` on every process (None
    without client-level DP)."""
    if self.level != "client":
      return None
    key = multihost.broadcast_json(None if self.server is None else self.server.jax_key(
        self._purpose(FEDAVG_NOISE), round_idx).tolist())
    return np.asarray(key, np.uint32)

  def client_sample(self, num_clients: int, sampling_rate: float, max_clients: int,
                    round_idx: int) -> np.ndarray:
    """Sorted ids of round `round_idx`'s Poisson client sample on every process: drawn by the
    server from its secret (client level; `federated.sampling.poisson_clients`)."""
    if self.level != "client":
      raise ValueError("the server's secret client sample exists at privacy.level='client' only")
    ids = None if self.server is None else poisson_clients(
        self.server.numpy_rng(self._purpose(FEDAVG_SAMPLING), round_idx), num_clients,
        sampling_rate, max_clients).tolist()
    return np.asarray(multihost.broadcast_json(ids), np.int32)
