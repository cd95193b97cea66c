"""The combiner's gRPC servicers: thin translations onto :class:`CombinerCore`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator

import grpc

from fedgrpc.combiner.clients import ClientConnection
from fedgrpc.combiner.core import CombinerCore
from fedgrpc.errors import FedgrpcError
from fedgrpc.model.chunking import DEFAULT_CHUNK_SIZE
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.model.v1 import model_pb2
from fedgrpc.rpc.connect import Outgoing
from fedgrpc.rpc.streams import first_message, pump
from fedgrpc.security.identity import acting_subject, caller_token_id, check_acting_as
from fedgrpc.security.limits import validate_fields, validate_requests
from fedgrpc.transfer import Chunk, encoded_model_stream, prepended, receive_model

log = logging.getLogger(__name__)

# Updates from this size on are received one at a time (see CombinerModelServicer).
LARGE_UPDATE_BYTES = 32 * 1024 * 1024


@validate_requests
class CombinerServicer:
    """CombinerService (mount it with :func:`add_combiner_service`: Connect may yield
    :class:`SharedModelTask` messages)."""

    def __init__(
        self,
        core: CombinerCore,
        *,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        max_heartbeats_per_second: float = math.inf,
    ) -> None:
        self._core = core
        self._interval = heartbeat_interval
        self._timeout = heartbeat_timeout
        self._max_heartbeats = max_heartbeats_per_second

    async def Connect(
        self,
        request_iterator: AsyncIterator[combiner_pb2.ClientMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[Outgoing]:  # see add_combiner_service
        hello: combiner_pb2.ClientHello = await first_message(request_iterator, "hello", "a hello")
        validate_fields(hello)
        check_acting_as(hello.name, "client name")
        client = self._core.clients.connect(
            hello.name,
            context.peer(),
            tuple(hello.tags),
            public_key=hello.public_key,
            inline_model_bytes=min(self._core.inline_model_bytes, hello.inline_model_bytes),
        )
        client.token_id = caller_token_id()
        log.info("client %s connected (%s, fedgrpc %s)", hello.name, context.peer(), hello.version)
        interval, timeout = self._pace()
        welcome = combiner_pb2.Welcome(
            combiner_name=self._core.name,
            heartbeat_interval=interval,
            heartbeat_timeout=timeout,
            inline_model_bytes=client.inline_model_bytes,
        )
        try:
            yield combiner_pb2.ServerMessage(welcome=welcome)
            async for message in pump(
                client,
                request_iterator,
                lambda m: self._on_message(client, m),
                heartbeat=_heartbeat,
                pace=self._pace,
            ):
                yield message
        finally:
            self._core.clients.disconnect(client)
            log.info(
                "client %s disconnected: %s", client.name, client.close_reason or "stream ended"
            )

    def _pace(self) -> tuple[float, float]:
        """Every client's heartbeat interval and timeout at the current number of clients."""
        return heartbeat_pace(
            len(self._core.clients), self._interval, self._timeout, self._max_heartbeats
        )

    def _on_message(self, client: ClientConnection, message: combiner_pb2.ClientMessage) -> None:
        """Pass on a message whose ids and metadata pass the limits; drop (and log) others."""
        try:
            validate_fields(message)
        except FedgrpcError as error:
            log.warning("dropped a message from client %s: %s", client.name, error)
            return
        self._core.handle_client_message(client, message)


def heartbeat_pace(
    clients: int, interval: float, timeout: float, max_per_second: float
) -> tuple[float, float]:
    """The heartbeat interval and timeout of each of ``clients`` clients: the configured ones
    while ``clients / interval`` stays within ``max_per_second``, else both stretched by the
    same factor. The combiner tells every client its pace again on each heartbeat, so the
    total stays near ``max_per_second`` as clients come and go."""
    stretch = max(1.0, clients / (interval * max_per_second))
    return interval * stretch, timeout * stretch


def _heartbeat(interval: float, timeout: float) -> combiner_pb2.ServerMessage:
    return combiner_pb2.ServerMessage(
        heartbeat=combiner_pb2.Heartbeat(interval=interval, timeout=timeout)
    )


@validate_requests
class CombinerModelServicer:
    """Clients download global models here and upload their updates (mount it with
    :func:`fedgrpc.transfer.add_model_service`: Download yields pre-encoded chunks)."""

    def __init__(
        self,
        core: CombinerCore,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_concurrent_uploads: int = 2,
    ) -> None:
        self._core = core
        self._chunk_size = chunk_size
        self._ingest = asyncio.Semaphore(max_concurrent_uploads)
        # Large updates are received one at a time: each in-flight one holds its full size in
        # memory until folded, and on the combiner's one event loop two streams are no faster
        # than one. Waiting streams are held back by HTTP/2 flow control, not buffered here.
        self._large_ingest = asyncio.Lock()
        # Calls served, by method name (small models travel inline on Connect instead).
        self.calls: Counter[str] = Counter()

    async def Upload(
        self,
        request_iterator: AsyncIterator[Chunk],
        context: grpc.aio.ServicerContext,
    ) -> model_pb2.UploadResponse:
        self.calls["Upload"] += 1
        uploader = acting_subject()  # a client uploads only for its own tasks
        async with self._ingest:
            messages = aiter(request_iterator)
            first = await anext(messages, None)
            large = first is not None and first.header.total_size >= LARGE_UPDATE_BYTES
            async with self._large_ingest if large else contextlib.nullcontext():
                update = await receive_model(
                    prepended(first, messages),
                    max_size=self._core.max_model_size,
                    check_header=lambda header: self._check_upload(header, uploader),
                    mutable=True,  # parsed and folded in place, never copied
                )
                response = model_pb2.UploadResponse(
                    model_id=update.header.model_id,
                    size=len(update.data),
                    digest=update.header.digest,
                )
                await self._core.accept_update(update)
                del update  # free the payload before the next large upload is let in
        return response

    def _check_upload(self, header: model_pb2.ModelHeader, uploader: str | None) -> None:
        validate_fields(header)
        self._core.check_upload(header, uploader)

    async def Download(
        self, request: model_pb2.DownloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        self.calls["Download"] += 1
        cached = await self._core.models.get(request.model_id)
        header = model_pb2.ModelHeader(model_id=cached.model_id, digest=cached.digest)
        # A client may ask for smaller chunks, never for larger than the server's message limit.
        chunk_size = min(request.chunk_size or self._chunk_size, self._chunk_size)
        try:
            stream = encoded_model_stream(cached.data, header=header, chunk_size=chunk_size)
            for message in stream:  # registered with add_model_service: pre-encoded
                yield message
        finally:
            self._core.models.downloaded(cached)
