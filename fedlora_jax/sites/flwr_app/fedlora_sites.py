"""Entry points of the Flower App: the project's ServerApp and ClientApp."""

from fedlora_jax.sites.client_app import app as client
from fedlora_jax.sites.server_app import app as server

__all__ = ["client", "server"]
