"""Attacks: hand-computed replacements, and only the attackers' rows change -- on flat updates
and inside the jitted round, right after local training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedlora_jax import federated as F
from fedlora_jax.federated.attacks import Attack, alie_z
from fedlora_jax.federated.safeguards import Safeguards
from tests.fed_fixtures import client_batches, tiny_model

U = np.arange(12, dtype=np.float32).reshape(4, 3) - 5.0
IDS = jnp.asarray([0, 2, 3, 5])  # the round's clients; client 2 (row 1) and 5 (row 3) attack


def _apply(kind, scale=0.0):
  return np.asarray(Attack(kind, (2, 5), scale).apply(jnp.asarray(U), IDS, 6, jax.random.key(0)))


def test_replacements_equal_hand_computed_values():
  bad = [1, 3]
  expected = {
      "sign_flip": -U[bad],
      "scale": 4.0 * U[bad],  # default s = C = 4 clients
      "alie": np.broadcast_to(U.mean(0) - alie_z(4, 2) * U.std(0), (2, 3)),
  }
  for kind, want in expected.items():
    np.testing.assert_allclose(_apply(kind)[bad], want, rtol=1e-6, err_msg=kind)
  np.testing.assert_allclose(_apply("sign_flip", 2.0)[bad], -2.0 * U[bad])
  g = _apply("gaussian", 3.0)[bad]
  assert not np.allclose(g, U[bad]) and 1.0 < g.std() < 6.0
  # Baruch et al.'s z for n = 50, m = 24 (their paper's setting): s = 2, z = Phi^-1(48/50).
  np.testing.assert_allclose(alie_z(50, 24), 1.7506860712521692, rtol=1e-9)


@pytest.mark.parametrize("kind", ["sign_flip", "scale", "gaussian", "alie"])
def test_only_attackers_rows_change(kind):
  out = _apply(kind)
  np.testing.assert_array_equal(out[[0, 2]], U[[0, 2]])
  assert not np.allclose(out[[1, 3]], U[[1, 3]])


@pytest.mark.parametrize("kind", ["scale", "alie", "sign_flip"])
def test_padding_slots_never_attack_nor_count_as_clients(kind):
  """Two padding slots (id -1) appended: the real rows get exactly what they get without them,
  and the padding rows are left alone (the last client's attacker flag is not read for -1)."""
  padded = np.concatenate([U, 100.0 + U[:2]])
  ids = jnp.asarray([0, 2, 3, 5, -1, -1])
  out = np.asarray(Attack(kind, (2, 5)).apply(jnp.asarray(padded), ids, 6, jax.random.key(0)))
  np.testing.assert_allclose(out[:4], _apply(kind), rtol=1e-6)
  np.testing.assert_array_equal(out[4:], padded[4:])


def test_bad_attack_settings_are_errors():
  with pytest.raises(ValueError, match="unknown attack kind"):
    Attack("flip")
  with pytest.raises(ValueError, match="names no attacking clients"):
    Attack("scale")


def test_attack_in_the_round_changes_only_the_attackers_local_adapters():
  graphdef, base, lora = tiny_model()
  tr = F.LocalTraining(local_steps=1, learning_rate=1e-2)
  alg = F.make_algorithm("fedavg")
  batches = client_batches(3, 1, seed=0)
  ids = np.arange(3)
  state = F.init_state(alg, lora, 3, 0)
  honest = F.FederatedRound(graphdef, alg, tr, 3).train(state, base, batches, ids)
  attacked = F.FederatedRound(graphdef, alg, tr, 3, safeguards=Safeguards(
      attack=Attack("sign_flip", (1,)))).train(state, base, batches, ids)
  for h, a, g in zip(jax.tree.leaves(honest[0]), jax.tree.leaves(attacked[0]),
                     jax.tree.leaves(lora)):
    h, a, g = np.asarray(h), np.asarray(a), np.asarray(g)
    np.testing.assert_array_equal(a[[0, 2]], h[[0, 2]])
    np.testing.assert_allclose(a[1] - g, -(h[1] - g), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(honest[2]), np.asarray(attacked[2]))  # same losses
