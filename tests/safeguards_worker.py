"""Subprocess worker of tests/test_robust_sharded.py (JAX's device count is fixed at start-up).

    python -m tests.safeguards_worker OUT_DIR    (with 4 forced host devices)
Two rounds of 4 clients with each safeguard setting, sharded over 4 devices and unsharded;
writes OUT_DIR/results.npz with the final global adapters of both.
"""

from __future__ import annotations

import sys

import numpy as np

CLIENTS = 4
SETTINGS = ("median_sign_flip", "krum_scale", "dp_fedavg_adaptive", "dp_sgd")


def safeguards(name: str):
  from fedlora_jax.federated.attacks import Attack  # pylint: disable=import-outside-toplevel
  from fedlora_jax.federated.robust import RobustRule  # pylint: disable=import-outside-toplevel
  from fedlora_jax.federated.safeguards import Safeguards  # pylint: disable=import-outside-toplevel
  from fedlora_jax import privacy as P  # pylint: disable=import-outside-toplevel
  return {
      "median_sign_flip": lambda: Safeguards(robust=RobustRule("median"),
                                             attack=Attack("sign_flip", (1,))),
      "krum_scale": lambda: Safeguards(robust=RobustRule("krum", f=1, norm_bound=0.5),
                                       attack=Attack("scale", (2,))),
      "dp_fedavg_adaptive": lambda: Safeguards(client_dp=P.ClientDP(
          0.5, 0.05, CLIENTS, P.AdaptiveClipping(count_noise=1.0))),
      "dp_sgd": lambda: Safeguards(example_dp=P.ExampleDP(1.0, 0.5, 2.0)),
  }[name]()


def main(out_dir: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_default_matmul_precision", "highest")
  jax.config.update("jax_threefry_partitionable", True)
  from fedlora_jax import federated as F  # pylint: disable=import-outside-toplevel
  from tests.fed_fixtures import client_batches, tiny_model  # pylint: disable=import-outside-toplevel
  assert jax.device_count() == CLIENTS, jax.devices()
  graphdef, base, lora = tiny_model()
  tr = F.LocalTraining(local_steps=2, optimizer="sgd", learning_rate=1e-2)
  alg = F.make_algorithm("fedavg")
  ids, counts = np.arange(CLIENTS), np.arange(1, CLIENTS + 1) * 10.0
  out = {}
  for name in SETTINGS:
    sg = safeguards(name)
    for mode in ("single", "sharded"):
      sharding = F.ClientSharding(F.make_mesh(CLIENTS)) if mode == "sharded" else None
      fr = F.FederatedRound(graphdef, alg, tr, CLIENTS, sharding, safeguards=sg)
      state, b = fr.place(F.init_state(alg, lora, CLIENTS, 0, sg), base)
      for r in range(2):  # the same (test) secret keys in both modes, so the runs must agree
        noise = np.stack([np.asarray([r, c], np.uint32) for c in range(CLIENTS)])
        state, b, _ = fr(state, b, client_batches(CLIENTS, 2, seed=r), ids, counts, noise,
                         np.asarray([r, 99], np.uint32))
      flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state["global_lora"]))[0]
      for path, x in flat:
        out[f"{name}/{mode}/{jax.tree_util.keystr(path)}"] = np.asarray(x)
      out[f"{name}/{mode}/moved"] = np.asarray(max(
          float(np.abs(np.asarray(x) - np.asarray(y)).max())
          for x, y in zip(jax.tree.leaves(state["global_lora"]), jax.tree.leaves(lora))))
  np.savez(f"{out_dir}/results.npz", **out)


if __name__ == "__main__":
  main(sys.argv[1])
