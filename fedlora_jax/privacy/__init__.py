"""Differential privacy: example-level DP-SGD (one training record), client-level DP-FedAvg,
accounting, secret noise.

The round reaches them through `fedlora_jax.federated.safeguards.Safeguards`.
"""

from fedlora_jax.privacy.dp_fedavg import AdaptiveClipping, ClientDP
from fedlora_jax.privacy.dp_sgd import ExampleDP

__all__ = ["AdaptiveClipping", "ClientDP", "ExampleDP"]
