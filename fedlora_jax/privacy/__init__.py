"""Differential privacy (patient-level DP-SGD, client-level DP-FedAvg, accounting) and the round's
privacy / robustness plug-ins (`Safeguards`)."""

from fedlora_jax.privacy.dp_fedavg import AdaptiveClipping, ClientDP
from fedlora_jax.privacy.dp_sgd import ExampleDP
from fedlora_jax.privacy.safeguards import Safeguards

__all__ = ["AdaptiveClipping", "ClientDP", "ExampleDP", "Safeguards"]
