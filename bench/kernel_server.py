"""Servers for the transfer kernels (``python -m bench.kernel_server grpc|socket``).

``grpc``: fedgrpc's server factory serving a ModelService built from the same transfer code
the combiner uses (:func:`fedgrpc.transfer.receive_model` for uploads,
:func:`fedgrpc.transfer.model_stream` with a known digest for downloads), holding one payload
in memory. ``socket``: a plain TCP server that receives ``size`` bytes into a buffer and
sends them back on request. Each prints its port as a JSON ready line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator

import grpc

from fedgrpc.allocator import tune_allocator
from fedgrpc.model.chunking import model_digest
from fedgrpc.proto.model.v1 import model_pb2
from fedgrpc.rpc.server import Service, service_name, start_server
from fedgrpc.transfer import Chunk, add_model_service, encoded_model_stream, receive_model

MAX_MESSAGE = 16 * 1024 * 1024
MAX_MODEL = 2048 * 1024 * 1024


class MemoryModelServicer:
    """Keeps the last upload; serves a payload of ``size`` bytes for downloads."""

    def __init__(self, size: int) -> None:
        self._data = os.urandom(size)
        self._digest = model_digest(self._data)

    async def Upload(  # noqa: N802 - the RPC's name
        self,
        request_iterator: AsyncIterator[Chunk],
        context: grpc.aio.ServicerContext,
    ) -> model_pb2.UploadResponse:
        # Into one buffer, as the combiner receives updates.
        received = await receive_model(request_iterator, max_size=MAX_MODEL, mutable=True)
        return model_pb2.UploadResponse(
            model_id="upload", size=len(received.data), digest=received.header.digest
        )

    async def Download(  # noqa: N802 - the RPC's name
        self, request: model_pb2.DownloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        header = model_pb2.ModelHeader(model_id=request.model_id, digest=self._digest)
        for message in encoded_model_stream(self._data, header=header):
            yield message


async def serve_grpc(size: int) -> None:
    service = Service(
        servicer=MemoryModelServicer(size),
        add_to_server=add_model_service,
        name=service_name(model_pb2, "ModelService"),
    )
    server = await start_server(
        host="127.0.0.1", port=0, services=[service], max_message_size=MAX_MESSAGE
    )
    print(json.dumps({"event": "ready", "port": server.port}), flush=True)
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop(1)


def serve_socket(size: int) -> None:
    """Per connection: a 1-byte command, ``u`` (receive ``size`` bytes, answer ``k``) or ``d``
    (send ``size`` bytes)."""
    buffer = bytearray(size)
    payload = os.urandom(size)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        print(json.dumps({"event": "ready", "port": listener.getsockname()[1]}), flush=True)
        while True:
            connection, _ = listener.accept()
            with connection:
                command = connection.recv(1)
                if command == b"u":
                    receive_exactly(connection, memoryview(buffer))
                    connection.sendall(b"k")
                elif command == b"d":
                    connection.sendall(payload)


def receive_exactly(connection: socket.socket, view: memoryview) -> None:
    received = 0
    while received < len(view):
        count = connection.recv_into(view[received:])
        if count == 0:
            raise ConnectionError("peer closed early")
        received += count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["grpc", "socket"])
    parser.add_argument("--size", type=int, required=True)
    args = parser.parse_args()
    tune_allocator()  # as the daemons do (fedgrpc/cli/daemon.py)
    if args.kind == "grpc":
        asyncio.run(serve_grpc(args.size))
    else:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        serve_socket(args.size)


if __name__ == "__main__":
    main()
