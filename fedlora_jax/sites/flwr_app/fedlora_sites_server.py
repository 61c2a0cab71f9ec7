"""The ServerApp component of the Flower App."""

from fedlora_jax.sites.server_app import app

__all__ = ["app"]
