"""The clients connected to one combiner: their outgoing queues and liveness."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from fedgrpc.errors import InvalidArgument, ResourceExhausted
from fedgrpc.rpc.connect import Outgoing
from fedgrpc.rpc.streams import StreamPeer

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ClientConnection(StreamPeer[Outgoing]):
    """One client's stream on this combiner."""

    ip: str = ""
    tags: tuple[str, ...] = ()
    # The node's X25519 public key from its hello (analyses); forwarded to the controller.
    public_key: bytes = b""
    # The largest model sent to or accepted from this client inline on its stream (the
    # smaller of the combiner's and the client's limits); 0: ModelService only.
    inline_model_bytes: int = 0


ConnectionHook = Callable[[ClientConnection], None]


class ClientRegistry:
    """Name -> live connection. A reconnecting client replaces its stale stream."""

    def __init__(
        self,
        *,
        max_clients: int,
        on_connect: ConnectionHook | None = None,
        on_disconnect: ConnectionHook | None = None,
    ) -> None:
        self._max_clients = max_clients
        self._clients: dict[str, ClientConnection] = {}
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect

    def connect(
        self,
        name: str,
        ip: str,
        tags: tuple[str, ...] = (),
        *,
        public_key: bytes = b"",
        inline_model_bytes: int = 0,
    ) -> ClientConnection:
        if not name or len(name) > 128:
            raise InvalidArgument("client name must be 1 to 128 characters")
        previous = self._clients.get(name)
        if previous is None and len(self._clients) >= self._max_clients:
            raise ResourceExhausted(
                f"combiner is full ({self._max_clients} clients); ask the controller for another"
            )
        connection = ClientConnection(
            name=name,
            ip=ip,
            tags=tags,
            public_key=public_key,
            inline_model_bytes=inline_model_bytes,
        )
        self._clients[name] = connection
        if previous is not None:
            log.info("client %s reconnected; closing its previous stream", name)
            previous.close("replaced by a newer connection of the same client")
            if self._on_disconnect:
                self._on_disconnect(previous)
        if self._on_connect:
            self._on_connect(connection)
        return connection

    def disconnect(self, connection: ClientConnection) -> None:
        """Forget ``connection`` unless a newer stream of the same client replaced it."""
        if self._clients.get(connection.name) is connection:
            del self._clients[connection.name]
            if self._on_disconnect:
                self._on_disconnect(connection)

    def get(self, name: str) -> ClientConnection | None:
        return self._clients.get(name)

    def online(self) -> list[ClientConnection]:
        return list(self._clients.values())

    def __len__(self) -> int:
        return len(self._clients)

    def close_all(self, reason: str) -> None:
        for connection in list(self._clients.values()):
            connection.close(reason)
