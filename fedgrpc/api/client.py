"""``APIClient``: FEDn's Python API client, over the controller's gRPC services.

Code written for FEDn switches by changing one import (``from fedgrpc.api import APIClient``):
the methods have FEDn's names, parameters and plain-dict results. Failures are raised as
:mod:`fedgrpc.errors` exceptions (``NotFound``, ``FailedPrecondition``, ...) carrying
``.code``, where FEDn returned a dict with an error message.
"""

from __future__ import annotations

from types import TracebackType

from fedgrpc.api._analyses import AnalysisMethods
from fedgrpc.api._connection import auth_metadata, open_channel, parse_target
from fedgrpc.api._events import EventMethods
from fedgrpc.api._generated import ControlClientBase
from fedgrpc.api._models import ModelMethods
from fedgrpc.api._network import NetworkMethods
from fedgrpc.api._packages import PackageMethods
from fedgrpc.api._sessions import SessionMethods
from fedgrpc.api._tokens import TokenMethods
from fedgrpc.api._transfer import ModelClient


class APIClient(
    NetworkMethods,
    ModelMethods,
    PackageMethods,
    SessionMethods,
    EventMethods,
    TokenMethods,
    AnalysisMethods,
):
    """A synchronous client of a fedgrpc controller.

    ``host`` is ``"host"``, ``"host:port"`` or ``"grpc://host:port"`` (``grpcs://`` implies
    TLS); the port defaults to 12080. ``secure=True`` connects over TLS, verified against
    ``root_certificates`` (PEM) or gRPC's default roots. ``verify`` is accepted for FEDn
    compatibility only: gRPC always verifies the server's certificate. ``token`` (default:
    ``$FEDGRPC_AUTH_TOKEN``) is sent with every call as ``authorization: <auth_scheme> <token>``,
    the scheme defaulting to ``Bearer``.

    Every RPC, with all its fields and typed messages, is also available on :attr:`control`.
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        secure: bool = False,
        verify: bool = False,
        token: str | None = None,
        auth_scheme: str | None = None,
        *,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
    ) -> None:
        self.target = parse_target(host, port, secure)
        self.host, self.port, self.secure = self.target.host, self.target.port, self.target.secure
        self.verify = verify
        self.channel = open_channel(
            self.target,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
        )
        metadata = auth_metadata(token, auth_scheme)
        self.control = ControlClientBase(self.channel, metadata=metadata)
        self._model_service = ModelClient(self.channel, metadata=metadata)

    def close(self) -> None:
        """Close the channel; calls made afterwards fail."""
        self.channel.close()

    def __enter__(self) -> APIClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        scheme = "grpcs" if self.secure else "grpc"
        return f"APIClient({scheme}://{self.target.address})"
