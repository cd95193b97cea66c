"""A running combiner: its server, its controller link and the core between them."""

from __future__ import annotations

import asyncio
import logging
import socket

from fedgrpc.backoff import Backoff
from fedgrpc.combiner.core import CombinerCore
from fedgrpc.combiner.link import ControllerLink
from fedgrpc.combiner.models import CachedModel
from fedgrpc.combiner.services import CombinerModelServicer, CombinerServicer
from fedgrpc.config import CombinerConfig
from fedgrpc.errors import PermissionDenied
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.model.v1 import model_pb2
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.rpc.channel import open_channel
from fedgrpc.rpc.connect import add_combiner_service
from fedgrpc.rpc.server import (
    RunningServer,
    Service,
    service_name,
    start_server,
    warn_if_plaintext,
)
from fedgrpc.rpc.streams import close_streams_of_token
from fedgrpc.security.authz import ServerKind
from fedgrpc.security.interceptor import AuthInterceptor
from fedgrpc.security.revocation import LinkedVerifier, RevocationList
from fedgrpc.security.tls import channel_credentials_for, server_credentials_for
from fedgrpc.transfer import (
    ModelTransferStub,
    add_model_service,
    dict_to_struct,
    download_model,
    upload_model,
)

log = logging.getLogger(__name__)


class Combiner:
    """Start with :meth:`start`, stop with :meth:`stop`; ``address`` is known after start."""

    def __init__(self, config: CombinerConfig) -> None:
        self.config = config
        self.server: RunningServer | None = None
        self.core: CombinerCore | None = None
        self.model_service: CombinerModelServicer | None = None
        self.link: ControllerLink | None = None
        self._link_task: asyncio.Task[None] | None = None
        self.name = config.name or ""
        self.address = ""
        # Client tokens are checked with the key the controller sends at registration; until
        # then every client call is refused as UNAVAILABLE.
        self.verifier = LinkedVerifier(RevocationList())

    async def start(self) -> None:
        config = self.config
        channel = open_channel(
            config.controller,
            max_message_size=config.max_message_size,
            credentials=channel_credentials_for(config),
            token=config.require_token(),
        )
        self._channel = channel
        self._model_stub = ModelTransferStub(channel)
        # The default name includes the bound port, so the core learns its name after binding.
        core = CombinerCore(
            name=self.name,
            max_clients=config.max_clients,
            max_model_size=config.max_model_size,
            inline_model_bytes=config.inline_model_bytes,
            report=self._report,
            fetch_model=self._fetch_model,
            upload_partial=self._upload_partial,
        )
        self.core = core
        self.model_service = CombinerModelServicer(
            core,
            chunk_size=config.chunk_size,
            max_concurrent_uploads=config.max_concurrent_uploads,
        )
        services = [
            Service(
                servicer=CombinerServicer(
                    core,
                    heartbeat_interval=config.heartbeat_interval,
                    heartbeat_timeout=config.heartbeat_timeout,
                    max_heartbeats_per_second=config.max_client_heartbeats_per_second,
                ),
                add_to_server=add_combiner_service,
                name=service_name(combiner_pb2, "CombinerService"),
            ),
            Service(
                servicer=self.model_service,
                add_to_server=add_model_service,
                name=service_name(model_pb2, "ModelService"),
            ),
        ]
        warn_if_plaintext(config.host, config.serves_tls)
        self.server = await start_server(
            host=config.host,
            port=config.port,
            services=services,
            max_message_size=config.max_message_size,
            interceptors=[AuthInterceptor(self.verifier, ServerKind.COMBINER)]
            if config.auth
            else [],
            credentials=server_credentials_for(config),
        )
        self.address = config.advertise_address or self.server.address
        self.name = self.name or f"combiner-{socket.gethostname()}-{self.server.port}"
        core.name = self.name
        self.link = ControllerLink(
            channel=channel,
            registration=self._registration,
            connected_count=lambda: len(core.clients),
            on_command=self._on_command,
            on_lost=core.cancel_all,
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
            backoff=Backoff(base=0.2, cap=5.0),
        )
        self._link_task = asyncio.ensure_future(self.link.run())

    def _report(self, report: network_pb2.CombinerReport) -> None:
        if self.link is not None:
            self.link.send(report)

    def _registration(self) -> network_pb2.RegisterCombiner:
        assert self.core is not None
        return network_pb2.RegisterCombiner(
            name=self.name,
            address=self.address,
            max_clients=self.config.max_clients,
            clients=self.core.connected_clients(),
            inline_model_bytes=self.config.inline_model_bytes,
        )

    def _on_command(self, command: network_pb2.ControllerCommand) -> None:
        assert self.core is not None
        kind = command.WhichOneof("kind")
        if kind == "registered":
            self._trust(command.registered)
        elif kind == "revoked":
            token_id = command.revoked.token_id
            self.verifier.revocations.add(token_id)
            closed = close_streams_of_token(self.core.clients.online(), token_id)
            log.warning("token %s revoked by the controller (%d streams closed)", token_id, closed)
        elif kind == "round":
            self.core.start_round(command.round)
        elif kind == "validation":
            self.core.start_validation(command.validation)
        elif kind == "cancel_round":
            self.core.cancel_round(command.cancel_round.round_id, command.cancel_round.reason)
        elif kind is not None:
            self.core.route_to_client(command)  # analyses: deliver, receipt, start, stop

    def _trust(self, registered: network_pb2.CombinerRegistered) -> None:
        """Take the controller's token key, revocation list and inline limit (sent at every
        registration)."""
        assert self.core is not None
        self.core.link_inline_bytes = min(
            self.config.inline_model_bytes, registered.inline_model_bytes
        )
        self.verifier.revocations.replace(registered.revoked_token_ids)
        if registered.token_public_key:
            self.verifier.set_public_key(registered.token_public_key)
        elif self.config.auth:
            raise PermissionDenied(
                "the controller sent no token public key (it runs without authentication) "
                "but this combiner checks client tokens; start both with auth or both without"
            )

    async def link_ended(self) -> None:
        """Wait until the controller link gives up for good (it raises why)."""
        if self._link_task is not None:
            await asyncio.shield(self._link_task)

    async def _fetch_model(self, model_id: str) -> CachedModel:
        assert self.core is not None
        received = await download_model(
            self._model_stub,
            model_id,
            max_size=self.config.max_model_size,
            reuse=self.core.models.by_digest,  # our own partial, when it became the model
            # Received into one buffer, not as chunks joined at the end: the chunks of a large
            # model would double the peak, and, freed, stay in the heap glibc could not trim
            # (a 100 MB model left 108 MiB there, and the combiner peaked at 4.4x the model).
            mutable=True,
        )
        data = received.data
        # Shared by every download of it: read-only, so no handler can write into the cache.
        data = data.toreadonly() if isinstance(data, memoryview) else data
        return CachedModel(model_id=model_id, data=data, digest=received.header.digest)

    async def _upload_partial(
        self,
        data: bytes | memoryview,
        assignment: network_pb2.RoundAssignment,
        total_weight: float,
        count: int,
    ) -> str:
        header = model_pb2.ModelHeader(
            session_id=assignment.session_id,
            round_id=assignment.round_id,
            metadata=dict_to_struct(
                {"combiner": self.name, "total_weight": total_weight, "num_updates": count}
            ),
        )
        response = await upload_model(
            self._model_stub, data, header=header, chunk_size=self.config.chunk_size
        )
        if self.core is not None:
            self.core.models.remember_upload(data, response.digest)
        return response.model_id

    async def stop(self, grace: float = 5.0) -> None:
        if self._link_task is not None:
            self._link_task.cancel()
            await asyncio.gather(self._link_task, return_exceptions=True)
        if self.core is not None:
            await self.core.shutdown()
        if self.server is not None:
            await self.server.stop(grace)
        await self._channel.close()
