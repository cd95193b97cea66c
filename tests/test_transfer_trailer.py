"""Model streams whose digest comes last: the sender hashes while sending, the receiver checks
the trailer before it hands the payload on. Over a real gRPC server on loopback."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import grpc
import pytest

from fedgrpc.model.chunking import DEFAULT_CHUNK_SIZE, model_digest
from fedgrpc.proto.model.v1 import model_pb2, model_pb2_grpc
from fedgrpc.rpc.channel import open_channel
from fedgrpc.rpc.server import RunningServer, Service, service_name, start_server
from fedgrpc.transfer import (
    Chunk,
    ModelTransferStub,
    add_model_service,
    receive_model,
    upload_model,
)

LIMIT = 64 * 1024 * 1024


class Receiver:
    """Keeps what it received; answers with the digest the stream was verified against."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def Upload(  # noqa: N802 - the RPC's name
        self, request_iterator: AsyncIterator[Chunk], context: grpc.aio.ServicerContext
    ) -> model_pb2.UploadResponse:
        model = await receive_model(request_iterator, max_size=LIMIT, mutable=True)
        self.received.append(bytes(model.data))
        return model_pb2.UploadResponse(size=len(model.data), digest=model.header.digest)

    async def Download(  # noqa: N802 - the RPC's name
        self, request: model_pb2.DownloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "uploads only")
        yield b""  # a generator, as the handler requires


@pytest.fixture
async def server() -> AsyncIterator[tuple[RunningServer, Receiver]]:
    receiver = Receiver()
    service = Service(
        servicer=receiver,
        add_to_server=add_model_service,
        name=service_name(model_pb2, "ModelService"),
    )
    running = await start_server(
        host="127.0.0.1", port=0, services=[service], max_message_size=16 << 20
    )
    yield running, receiver
    await running.server.stop(None)


def _channel(running: RunningServer) -> grpc.aio.Channel:
    return open_channel(f"127.0.0.1:{running.port}", max_message_size=16 << 20)


async def test_a_large_upload_is_hashed_while_sent_and_verified_from_the_trailer(
    server: tuple[RunningServer, Receiver],
) -> None:
    running, receiver = server
    payload = os.urandom(5 * DEFAULT_CHUNK_SIZE + 123)
    async with _channel(running) as channel:
        response = await upload_model(
            ModelTransferStub(channel), payload, header=model_pb2.ModelHeader(model_id="m")
        )
    assert response.digest == model_digest(payload)
    assert receiver.received == [payload]


async def _raw_upload(
    running: RunningServer, messages: list[model_pb2.ModelChunk]
) -> grpc.aio.AioRpcError:
    async with _channel(running) as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Upload(iter(messages))
    return caught.value


def _stream(payload: bytes, *, header_digest: str = "") -> list[model_pb2.ModelChunk]:
    header = model_pb2.ModelHeader(total_size=len(payload), digest=header_digest)
    return [model_pb2.ModelChunk(header=header), model_pb2.ModelChunk(data=payload)]


def _trailer(digest: str) -> model_pb2.ModelChunk:
    return model_pb2.ModelChunk(trailer=model_pb2.ModelTrailer(digest=digest))


async def test_a_trailer_that_does_not_match_the_bytes_is_data_loss(
    server: tuple[RunningServer, Receiver],
) -> None:
    running, receiver = server
    payload = b"x" * 1000
    error = await _raw_upload(running, [*_stream(payload), _trailer(model_digest(b"other"))])
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert "blake3 mismatch" in (error.details() or "")
    assert receiver.received == []


@pytest.mark.parametrize(
    ("after_trailer", "trailer", "header_digest", "expected"),
    [
        ([model_pb2.ModelChunk(data=b"more")], "ok", "", "after its trailer"),
        ([], "not-hex", "", "64 hex digits"),
        ([], "ok", "0" * 64, "two digests"),
    ],
)
async def test_malformed_trailers_are_refused(
    server: tuple[RunningServer, Receiver],
    after_trailer: list[model_pb2.ModelChunk],
    trailer: str,
    header_digest: str,
    expected: str,
) -> None:
    running, receiver = server
    payload = b"y" * 1000
    digest = model_digest(payload) if trailer == "ok" else trailer
    messages = [*_stream(payload, header_digest=header_digest), _trailer(digest), *after_trailer]
    error = await _raw_upload(running, messages)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (error.details() or "")
    assert receiver.received == []


async def test_a_trailer_before_any_header_is_refused(
    server: tuple[RunningServer, Receiver],
) -> None:
    running, _ = server
    error = await _raw_upload(running, [_trailer("0" * 64)])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start with a header" in (error.details() or "")
