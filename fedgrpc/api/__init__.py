"""The Python API of a fedgrpc network: :class:`APIClient` (FEDn-compatible, plain dicts) and
:class:`ControlClientBase` (generated from the control service: one typed method per RPC)."""

from fedgrpc.api._generated import ControlClientBase
from fedgrpc.api.client import APIClient

__all__ = ["APIClient", "ControlClientBase"]
