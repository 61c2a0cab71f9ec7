"""Each party's secret DP randomness in a run, and the per-round keys the engine needs.

Hospitals (the clients this process holds) draw their DP-SGD noise and Poisson batches from their
own `DpSecret` in `<keystores>/<hospital>/dp_secret`, next to their BLS key; the server (process 0)
draws DP-FedAvg's noise from `<workdir>/keys/server/dp_secret`. The round's program runs on every
process, so the server's per-round key reaches the other processes (one organisation in a pod);
a hospital's keys never leave the process that holds it. With `privacy.reproducible_noise` every
secret derives from the config seed instead (research only: no privacy guarantee).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from fedlora_jax.federated.round import PAD
from fedlora_jax.privacy.secret import DpSecret
from fedlora_jax.run import multihost

SGD_NOISE = "dp-sgd noise"
SGD_SAMPLING = "dp-sgd poisson sampling"
FEDAVG_NOISE = "dp-fedavg noise"


def keystore_root(cfg, workdir: str) -> str:
  """The directory of the hospitals' keystores (`ledger.keystores`, default `<workdir>/keys`)."""
  return os.path.expanduser(cfg.ledger.keystores) or os.path.join(workdir, "keys")


class DpKeys:
  """The DP secrets this process holds and the keys of each round.

  Args:
    hospitals: {client id: that hospital's secret} for the clients on this process.
    server: the server's secret (process 0 only; None elsewhere or without client-level DP).
    client_level: client-level DP is on (the server's key is needed on every process).
  """

  def __init__(self, hospitals: dict[int, DpSecret], server: DpSecret | None,
               client_level: bool = False):
    self.hospitals = hospitals
    self.server = server
    self.client_level = client_level

  @classmethod
  def open(cls, cfg, workdir: str, names: Sequence[str], local_clients: Sequence[int]) -> DpKeys:
    """Loads (or creates) the secrets of the parties on this process for `privacy.level`."""
    level, seeded = cfg.privacy.level, cfg.privacy.reproducible_noise

    def secret(party: str, directory: str) -> DpSecret:
      return DpSecret.reproducible(cfg.seed, party) if seeded else DpSecret.load_or_create(
          directory)

    root = keystore_root(cfg, workdir)
    hospitals = ({c: secret(names[c], os.path.join(root, names[c])) for c in local_clients}
                 if level == "example" else {})
    server = (secret("server", os.path.join(workdir, "keys", "server"))
              if level == "client" and multihost.is_writer() else None)
    return cls(hospitals, server, client_level=level == "client")

  def sampling_rngs(self, client_ids: Sequence[int], round_idx: int
                    ) -> list[np.random.Generator]:
    """Each (local) client's secret Poisson-sampling generator for round `round_idx`."""
    return [self.hospitals[int(c)].numpy_rng(SGD_SAMPLING, round_idx) for c in client_ids]

  def noise_key(self, client_id: int, round_idx: int) -> np.ndarray:
    """uint32 [2]: a (local) client's secret DP-SGD noise key of round `round_idx`, or zeros for
    a padding slot or without DP-SGD."""
    if client_id == PAD or not self.hospitals:
      return np.zeros((2,), np.uint32)
    return self.hospitals[int(client_id)].jax_key(SGD_NOISE, round_idx)

  def server_noise_key(self, round_idx: int) -> np.ndarray | None:
    """uint32 [2]: the server's DP-FedAvg key of round `round_idx` on every process (None
    without client-level DP)."""
    if not self.client_level:
      return None
    key = multihost.broadcast_json(
        None if self.server is None else self.server.jax_key(FEDAVG_NOISE, round_idx).tolist())
    return None if key is None else np.asarray(key, np.uint32)
