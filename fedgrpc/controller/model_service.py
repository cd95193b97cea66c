"""The controller's ModelService: seed models from users, partial aggregates from combiners.

An upload tagged with a round id is a combiner's partial for a round in progress (refused when
no round with that id is awaited); any other upload is a seed model, parsed before it is kept
so a malformed file never enters the trail.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import grpc

from fedgrpc.controller.link_models import store_partial
from fedgrpc.controller.network import Network
from fedgrpc.controller.records import model_record_digest
from fedgrpc.controller.scope import caller_scope, in_scope
from fedgrpc.errors import FailedPrecondition
from fedgrpc.model.serialization import load_model
from fedgrpc.modelstore import StoredModel, validate_model_id
from fedgrpc.proto.model.v1 import model_pb2
from fedgrpc.security.limits import validate_fields, validate_requests
from fedgrpc.transfer import Chunk, ReceivedModel, encode_data_chunk, receive_model

# Models up to this size are read whole in the same worker-thread hop that opens them.
_READ_AHEAD_BYTES = 4 * 1024 * 1024


@validate_requests
class ControllerModelServicer:
    def __init__(self, network: Network) -> None:
        self._network = network
        # Calls served, by method name (small models travel inline on the links instead).
        self.calls: Counter[str] = Counter()

    async def Upload(
        self,
        request_iterator: AsyncIterator[Chunk],
        context: grpc.aio.ServicerContext,
    ) -> model_pb2.UploadResponse:
        self.calls["Upload"] += 1
        received = await receive_model(
            request_iterator,
            max_size=self._network.config.max_model_size,
            check_header=self._check_header,
            mutable=True,  # one preallocated buffer: the payload is held once, never joined
        )
        if received.header.round_id:
            model_id, stored = await asyncio.to_thread(
                store_partial, self._network, received.data, _verified_digest(received)
            )
        else:
            model_id, stored = await self._store_seed(received)
        return model_pb2.UploadResponse(model_id=model_id, size=stored.size, digest=stored.digest)

    def _check_header(self, header: model_pb2.ModelHeader) -> None:
        validate_fields(header)
        if header.model_id:
            validate_model_id(header.model_id)
        if header.round_id and ("round", header.round_id) not in self._network.registry.collectors:
            raise FailedPrecondition(
                f"round {header.round_id} is not in progress; its partial result was dropped"
            )

    async def _store_seed(self, received: ReceivedModel) -> tuple[str, StoredModel]:
        config = self._network.config
        await asyncio.to_thread(load_model, received.data, max_size=config.max_model_size)
        model_id = received.header.model_id or uuid.uuid4().hex
        models, store = self._network.models, self._network.store
        stored = await asyncio.to_thread(
            models.put_bytes, model_id, received.data, verified_digest=_verified_digest(received)
        )
        name = str(received.metadata.get("name") or f"seed {model_id[:8]}")
        await asyncio.to_thread(
            store.models.create,
            id=model_id,
            parent_model=None,
            session_id=None,
            name=name,
            size=stored.size,
            digest=stored.digest,
            scope=caller_scope(),
        )
        return model_id, stored

    async def Download(
        self, request: model_pb2.DownloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_pb2.ModelChunk | bytes]:
        self.calls["Download"] += 1
        chunk_size = min(
            request.chunk_size or self._network.config.chunk_size, self._network.config.chunk_size
        )
        # One worker-thread hop for the record, the open and, for a small model, every chunk:
        # each hop costs a thread wake-up, and this is on the critical path of every round.
        record, chunks, first = await asyncio.to_thread(self._open, request.model_id, chunk_size)
        in_scope(dict(record), "model")  # NotFound for another scope's model (nothing sent)
        yield model_pb2.ModelChunk(
            header=model_pb2.ModelHeader(
                model_id=request.model_id,
                total_size=int(record["size"]),
                chunk_size=chunk_size,
                digest=model_record_digest(record),
            )
        )
        for chunk in first:
            yield encode_data_chunk(chunk)  # mounted with add_model_service
        async for chunk in _in_thread(chunks):
            yield encode_data_chunk(chunk)  # mounted with add_model_service

    def _open(
        self, model_id: str, chunk_size: int
    ) -> tuple[Mapping[str, Any], Iterator[bytes], list[bytes]]:
        """The model's record, its chunk iterator, and its first chunks read up front when the
        whole model is small (then the iterator is exhausted)."""
        record = self._network.store.models.get(model_id)
        chunks = self._network.models.get(model_id, chunk_size=chunk_size)
        if int(record["size"]) > _READ_AHEAD_BYTES:
            return record, chunks, []
        return record, iter(()), list(chunks)


async def _in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Read a blocking iterator (disk or GridFS) without stalling the event loop."""
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


def _verified_digest(received: ReceivedModel) -> str | None:
    """The upload's digest when receive_model checked the bytes against it (the header or the
    trailer named one); None makes the store hash them itself."""
    return received.header.digest.lower() or None
