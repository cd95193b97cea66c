"""fedgrpc: federated learning and federated analysis over gRPC."""

from fedgrpc._version import __version__
from fedgrpc.client.node import Client

__all__ = ["Client", "__version__"]
