"""fedgrpc: federated learning and federated analysis over gRPC."""

from fedgrpc._version import __version__
from fedgrpc.api import APIClient
from fedgrpc.client.node import Client

__all__ = ["APIClient", "Client", "__version__"]
