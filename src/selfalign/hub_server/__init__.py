"""An offline, Hub-compatible HTTP server for tests and demos (`python -m selfalign.hub_server`)."""

from .server import HubServer

__all__ = ["HubServer"]
