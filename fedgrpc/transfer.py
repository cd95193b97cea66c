"""Chunked model transfer over ``fedgrpc.model.v1.ModelService``, both ends.

A stream is one header (id, total size, chunk size, digest, round/task tags, metadata) followed
by data chunks. Receivers check the size limit as bytes arrive and the BLAKE3 digest at the end
(see :mod:`fedgrpc.model.chunking`), so a truncated, corrupted or oversized upload is refused
without ever being stored.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import grpc
from google.protobuf import struct_pb2

from fedgrpc.errors import InvalidArgument
from fedgrpc.model.chunking import (
    BLAKE3,
    DEFAULT_CHUNK_SIZE,
    BufferAssembler,
    ChunkAssembler,
    iter_chunks,
    model_digest,
)
from fedgrpc.model.digest import DigestBehind
from fedgrpc.proto.model.v1 import model_pb2, model_pb2_grpc
from fedgrpc.rpc.channel import typed_errors
from fedgrpc.rpc.server import add_handlers
from fedgrpc.rpc.wire import read_varint, varint

# Payloads from this size on are joined off the event loop: below it a thread hop costs more
# than the work.
_OFFLOAD_JOIN_BYTES = 8 * 1024 * 1024
# A whole payload below this size is hashed on the event loop: under 1 ms of BLAKE3, less
# than the thread wake-ups of handing it over when the machine is busy.
_INLINE_PAYLOAD_BYTES = 2 * 1024 * 1024


# --- the ModelChunk wire codec -------------------------------------------------------------
# A data chunk is the message ``ModelChunk{data}``: on the wire, the tag of field 2 with wire
# type LEN (0x12), the length as a varint, then the bytes. Building and parsing that by hand
# skips protobuf's copies (into a bytes, into the message, out of it: 73 ms per 100 MB here
# against 5 ms for one join) and its per-message objects; the bytes on the wire are exactly
# protobuf's, so peers using the generated code interoperate. Headers, and any message that
# is not exactly one data field, go through protobuf with all its rules.
_DATA_TAG = b"\x12"
_EMPTY_HEADER = model_pb2.ModelHeader()
_EMPTY_TRAILER = model_pb2.ModelTrailer()
_SERVICE = "fedgrpc.model.v1.ModelService"


class DataChunk:
    """A received data chunk: a view of the message's payload bytes, no copy.

    It answers the calls :func:`receive_model` makes on a ``ModelChunk``.
    """

    __slots__ = ("data",)

    def __init__(self, data: memoryview) -> None:
        self.data = data

    def HasField(self, field_name: str) -> bool:  # noqa: N802 - protobuf's name
        return False

    @property
    def header(self) -> model_pb2.ModelHeader:
        return _EMPTY_HEADER

    @property
    def trailer(self) -> model_pb2.ModelTrailer:
        return _EMPTY_TRAILER


Chunk = model_pb2.ModelChunk | DataChunk


def encode_data_chunk(chunk: bytes | bytearray | memoryview) -> bytes:
    """The serialized ``ModelChunk(data=chunk)``, built with one copy of ``chunk``."""
    return b"".join((_DATA_TAG, varint(memoryview(chunk).nbytes), chunk))


def serialize_chunk(message: model_pb2.ModelChunk | bytes) -> bytes:
    """gRPC serializer for model streams: pre-encoded bytes pass as they are."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def decode_chunk(raw: bytes) -> Chunk:
    """gRPC deserializer for model streams: a lone data field becomes a :class:`DataChunk`
    viewing ``raw``; anything else is parsed by protobuf."""
    if raw[:1] == _DATA_TAG:
        length, start = read_varint(raw, 1)
        if length >= 0 and start + length == len(raw):
            return DataChunk(memoryview(raw)[start:])
    return model_pb2.ModelChunk.FromString(raw)


class ModelTransferStub(model_pb2_grpc.ModelServiceStub):
    """The ModelService client with the hand-built codec: :func:`upload_model` sends data
    chunks pre-encoded and :func:`download_model` receives them as :class:`DataChunk`."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Upload = channel.stream_unary(
            f"/{_SERVICE}/Upload",
            request_serializer=serialize_chunk,
            response_deserializer=model_pb2.UploadResponse.FromString,
            _registered_method=True,
        )
        self.Download = channel.unary_stream(
            f"/{_SERVICE}/Download",
            request_serializer=model_pb2.DownloadRequest.SerializeToString,
            response_deserializer=decode_chunk,
            _registered_method=True,
        )


class ModelServicer(Protocol):
    """What :func:`add_model_service` mounts (the generated base class types Download as
    yielding ``ModelChunk`` only)."""

    def Upload(  # noqa: N802 - the RPC's name
        self, request_iterator: AsyncIterator[Chunk], context: grpc.aio.ServicerContext
    ) -> Awaitable[model_pb2.UploadResponse]: ...

    def Download(  # noqa: N802 - the RPC's name
        self, request: model_pb2.DownloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_pb2.ModelChunk | bytes]: ...


def add_model_service(servicer: ModelServicer, server: grpc.aio.Server) -> None:
    """Register a ModelService servicer with the hand-built codec: its Upload receives
    ``ModelChunk`` or :class:`DataChunk` messages, its Download may yield ``ModelChunk``
    messages or pre-encoded bytes (:func:`encoded_model_stream`, :func:`encode_data_chunk`)."""
    handlers = {
        "Upload": grpc.stream_unary_rpc_method_handler(
            servicer.Upload,
            request_deserializer=decode_chunk,
            response_serializer=model_pb2.UploadResponse.SerializeToString,
        ),
        "Download": grpc.unary_stream_rpc_method_handler(
            servicer.Download,
            request_deserializer=model_pb2.DownloadRequest.FromString,
            response_serializer=serialize_chunk,
        ),
    }
    add_handlers(server, _SERVICE, handlers)


# --- streams ---------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ReceivedModel:
    """A verified upload: its header and its bytes (digest and size already checked).

    ``data`` is a writeable ``memoryview`` when received with ``mutable=True``: the receiver
    owns it and may parse it in place.
    """

    header: model_pb2.ModelHeader
    data: bytes | memoryview

    @property
    def metadata(self) -> dict[str, Any]:
        return struct_to_dict(self.header.metadata)


def dict_to_struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if values:
        try:
            struct.update(dict(values))
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(
                f"metadata must be JSON-like (str, number, bool, list, dict): {exc}"
            ) from None
    return struct


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python values; numbers read as floats, as JSON has them.

    Non-finite numbers (a diverged model's loss) read as the strings "NaN", "Infinity" and
    "-Infinity", the names proto3's JSON mapping gives them: neither JSON nor the statestore
    holds such numbers, and refusing them would lose the whole report they came in.
    """
    return {key: _plain_value(value) for key, value in struct.fields.items()}


def _plain_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        return number if math.isfinite(number) else _NON_FINITE_NAMES[str(number)]
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_plain_value(item) for item in value.list_value.values]
    return None  # null_value, or a Value left unset


_NON_FINITE_NAMES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def model_stream(
    data: bytes | bytearray | memoryview,
    *,
    header: model_pb2.ModelHeader,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterable[model_pb2.ModelChunk]:
    """The messages of one model stream: the header (size and digest filled in), then data.

    A header that already carries the digest (a cached model) is trusted, saving a full pass
    over the bytes for every download.
    """
    view = memoryview(data)
    yield model_pb2.ModelChunk(header=_complete_header(view, header, chunk_size))
    for chunk in iter_chunks(view, chunk_size):
        yield model_pb2.ModelChunk(data=bytes(chunk))


def _complete_header(
    view: memoryview, header: model_pb2.ModelHeader, chunk_size: int
) -> model_pb2.ModelHeader:
    complete = model_pb2.ModelHeader()
    complete.CopyFrom(header)
    complete.total_size = view.nbytes
    complete.chunk_size = chunk_size
    if not complete.digest:
        complete.digest = model_digest(view)
    return complete


def encoded_model_stream(
    data: bytes | bytearray | memoryview,
    *,
    header: model_pb2.ModelHeader,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterable[bytes]:
    """:func:`model_stream` pre-encoded: for :class:`ModelTransferStub` and servicers
    registered with :func:`add_model_service`."""
    view = memoryview(data)
    complete = _complete_header(view, header, chunk_size)
    yield model_pb2.ModelChunk(header=complete).SerializeToString()
    for chunk in iter_chunks(view, chunk_size):
        yield encode_data_chunk(chunk)


async def upload_model(
    stub: model_pb2_grpc.ModelServiceStub,
    data: bytes | bytearray | memoryview,
    *,
    header: model_pb2.ModelHeader,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    timeout: float | None = None,
) -> model_pb2.UploadResponse:
    """Upload ``data`` and return the receiver's acknowledgement (typed errors on failure).

    Through a :class:`ModelTransferStub`, a large payload whose header has no digest is hashed
    while it is sent and its digest goes in the trailer; otherwise the header carries it.
    """
    messages: AsyncIterator[model_pb2.ModelChunk | bytes]
    if isinstance(stub, ModelTransferStub):
        messages = _encoded_upload(data, header, chunk_size)
    else:
        messages = _iterate(model_stream(data, header=header, chunk_size=chunk_size))
    async with typed_errors():
        response: model_pb2.UploadResponse = await stub.Upload(messages, timeout=timeout)
        return response


async def _iterate(
    messages: Iterable[model_pb2.ModelChunk | bytes],
) -> AsyncIterator[model_pb2.ModelChunk | bytes]:
    for message in messages:
        yield message


async def _encoded_upload(
    data: bytes | bytearray | memoryview, header: model_pb2.ModelHeader, chunk_size: int
) -> AsyncIterator[bytes]:
    view = memoryview(data)
    if header.digest or view.nbytes < _INLINE_PAYLOAD_BYTES:
        for message in encoded_model_stream(view, header=header, chunk_size=chunk_size):
            yield message
        return
    # Each chunk is hashed in a worker thread (BLAKE3 drops the GIL) while gRPC sends the
    # previous one: hashing first cost a full pass (~0.1 s per 100 MB) before the first byte.
    announced = model_pb2.ModelHeader()
    announced.CopyFrom(header)
    announced.total_size, announced.chunk_size = view.nbytes, chunk_size
    yield model_pb2.ModelChunk(header=announced).SerializeToString()
    hasher = BLAKE3.new()
    hashing = DigestBehind()
    try:
        for chunk in iter_chunks(view, chunk_size):
            hashing.then(partial(hasher.update, chunk), chunk.nbytes)
            yield encode_data_chunk(chunk)
        await hashing.done()
    finally:
        hashing.close()  # the call failed or was cancelled mid-stream
    trailer = model_pb2.ModelTrailer(digest=hasher.hexdigest())
    yield model_pb2.ModelChunk(trailer=trailer).SerializeToString()


Reuse = Callable[[str], "bytes | memoryview | None"]


async def download_model(
    stub: model_pb2_grpc.ModelServiceStub,
    model_id: str,
    *,
    max_size: int,
    timeout: float | None = None,
    reuse: Reuse | None = None,
    mutable: bool = False,
) -> ReceivedModel:
    """Download a model; its size and digest are verified against the header.

    ``reuse(digest)`` may return bytes the caller already holds with the digest the header
    announces: the download then stops after the header and returns those bytes. ``mutable``
    is :func:`receive_model`'s (one buffer, no join, returned as a writeable view).
    """
    request = model_pb2.DownloadRequest(model_id=model_id)
    async with typed_errors():
        call = stub.Download(request, timeout=timeout)
        if reuse is None:
            return await receive_model(call, max_size=max_size, mutable=mutable)
        messages = aiter(call)
        first = await anext(messages, None)
        known = _reusable(first, reuse)
        if first is not None and known is not None:
            call.cancel()
            return ReceivedModel(header=first.header, data=known)
        return await receive_model(prepended(first, messages), max_size=max_size, mutable=mutable)


def _reusable(first: Chunk | None, reuse: Reuse) -> bytes | memoryview | None:
    if first is None or not first.HasField("header") or len(first.header.digest) != 64:
        return None
    known = reuse(first.header.digest.lower())
    if known is None or len(known) != first.header.total_size:
        return None
    return known


async def prepended(first: Chunk | None, rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """A stream with its already-read first message put back in front."""
    if first is not None:
        yield first
    async for message in rest:
        yield message


HeaderCheck = Callable[[model_pb2.ModelHeader], None]


async def receive_model(
    messages: AsyncIterator[Chunk],
    *,
    max_size: int,
    check_header: HeaderCheck | None = None,
    mutable: bool = False,
) -> ReceivedModel:
    """Read one header-then-chunks(-then-trailer) stream into verified bytes.

    ``check_header`` may raise to refuse the stream as soon as its header is read, before any
    data is buffered (e.g. an update for a round that has closed). With ``mutable`` the chunks
    are written into one preallocated ``bytearray`` as they arrive (no join: the payload is
    held once, not twice) and a view of that buffer is returned for the caller to parse in place.
    A digest sent in the trailer is checked like one in the header, and the returned header
    carries it.
    """
    hashing = DigestBehind()
    try:
        header, assembler, trailer = await _read_stream(
            messages, hashing, check_header, max_size, mutable
        )
        await hashing.done()
    finally:
        hashing.close()  # the stream failed: the worker thread exits
    if trailer and not header.digest:
        header = _with_digest(header, trailer)
    if isinstance(assembler, BufferAssembler) or assembler.received < _OFFLOAD_JOIN_BYTES:
        return ReceivedModel(header=header, data=assembler.finish())
    # Joining the chunks is a copy of the whole payload; bytes.join drops the GIL for it.
    return ReceivedModel(header=header, data=await asyncio.to_thread(assembler.finish))


async def _read_stream(
    messages: AsyncIterator[Chunk],
    hashing: DigestBehind,
    check_header: HeaderCheck | None,
    max_size: int,
    mutable: bool,
) -> tuple[model_pb2.ModelHeader, ChunkAssembler | BufferAssembler, str]:
    """Header, assembler holding the data, and the trailer's digest ("" if none)."""
    header: model_pb2.ModelHeader | None = None
    assembler: ChunkAssembler | BufferAssembler | None = None
    trailer = ""
    async for message in messages:
        if message.HasField("header"):
            if header is not None:
                raise InvalidArgument("model stream has a second header; send exactly one, first")
            header = message.header
            assembler = await _start_stream(header, check_header, hashing, max_size, mutable)
        elif assembler is None:
            raise InvalidArgument("model stream must start with a header message")
        elif trailer:
            raise InvalidArgument("model stream goes on after its trailer; send it last")
        elif message.HasField("trailer"):
            assembler.expect_digest(message.trailer.digest)
            trailer = message.trailer.digest.lower()
        else:
            data = message.data
            hashing.then(assembler.add_deferred(data), len(data))
    if header is None or assembler is None:
        raise InvalidArgument("model stream was empty: expected a header and data chunks")
    return header, assembler, trailer


async def _start_stream(
    header: model_pb2.ModelHeader,
    check_header: HeaderCheck | None,
    hashing: DigestBehind,
    max_size: int,
    mutable: bool,
) -> ChunkAssembler | BufferAssembler:
    if check_header is not None:
        check_header(header)
    hashing.offload = header.total_size >= _INLINE_PAYLOAD_BYTES
    assembler = (BufferAssembler if mutable else ChunkAssembler)(
        expected_size=header.total_size,
        expected_digest=header.digest or None,
        max_size=max_size,
    )
    if isinstance(assembler, BufferAssembler) and hashing.offload:
        await asyncio.to_thread(assembler.prepare)  # maps the pages off the loop
    return assembler


def _with_digest(header: model_pb2.ModelHeader, digest: str) -> model_pb2.ModelHeader:
    completed = model_pb2.ModelHeader()
    completed.CopyFrom(header)
    completed.digest = digest
    return completed


async def stream_stored_model(
    chunks: Iterable[bytes],
    *,
    header: model_pb2.ModelHeader,
) -> AsyncIterator[model_pb2.ModelChunk]:
    """Serve stored bytes as a download stream (header first)."""
    yield model_pb2.ModelChunk(header=header)
    for chunk in chunks:
        yield model_pb2.ModelChunk(data=chunk)
