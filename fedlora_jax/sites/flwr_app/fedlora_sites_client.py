"""The ClientApp component of the Flower App (a module of its own: nodes skip the server code)."""

from fedlora_jax.sites.client_app import app

__all__ = ["app"]
