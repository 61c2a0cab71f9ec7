"""The federated engine: all clients of a round in one jitted, vmapped, sharded call."""

from fedlora_jax.federated.aggregation import client_weights, weighted_mean
from fedlora_jax.federated.algorithms import ALGORITHMS, Algorithm, make_algorithm
from fedlora_jax.federated.round import FederatedRound, LocalTraining, init_state
from fedlora_jax.federated.sampling import clients_per_round, poisson_clients, sample_clients
from fedlora_jax.federated.sharding import AxisRules, ClientSharding, make_mesh, mesh_shape

__all__ = ["ALGORITHMS", "Algorithm", "AxisRules", "ClientSharding", "FederatedRound",
           "LocalTraining", "client_weights", "clients_per_round", "init_state", "make_algorithm",
           "make_mesh", "mesh_shape", "poisson_clients", "sample_clients", "weighted_mean"]
