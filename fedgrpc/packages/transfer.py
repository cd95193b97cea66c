"""Package bytes over ``ControlService``: one ``PackageHeader``, then data chunks, both ways.

The header must announce the total size and the sha256; the receiver enforces its size limit
as chunks arrive and the checksum at the end (see :mod:`fedgrpc.model.chunking`), so a
truncated, corrupted or oversized stream never reaches the package checks, let alone a disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from fedgrpc.errors import InvalidArgument
from fedgrpc.model.chunking import (
    DEFAULT_CHUNK_SIZE,
    SHA256,
    ChunkAssembler,
    iter_chunks,
    sha256_hex,
)
from fedgrpc.proto.control.v1 import control_pb2 as pb
from fedgrpc.proto.control.v1 import control_pb2_grpc
from fedgrpc.rpc.channel import typed_errors


@dataclass(frozen=True, kw_only=True)
class ReceivedPackage:
    """A verified package stream: its header and its bytes (size and sha256 checked)."""

    header: pb.PackageHeader
    data: bytes


HeaderCheck = Callable[[pb.PackageHeader], None]


def package_stream(
    data: bytes, *, header: pb.PackageHeader, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[pb.PackageChunk]:
    """The messages of one package stream; the header's size and sha256 are filled in."""
    complete = pb.PackageHeader()
    complete.CopyFrom(header)
    complete.total_size = len(data)
    complete.sha256 = complete.sha256 or sha256_hex(data)
    yield pb.PackageChunk(header=complete)
    for chunk in iter_chunks(data, chunk_size):
        yield pb.PackageChunk(data=bytes(chunk))


async def upload_package(
    stub: control_pb2_grpc.ControlServiceStub,
    data: bytes,
    *,
    header: pb.PackageHeader,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    timeout: float | None = None,
) -> pb.Package:
    """Upload a tarball through ``UploadPackage``; the stored package's record."""

    async def messages() -> AsyncIterator[pb.PackageChunk]:
        for message in package_stream(data, header=header, chunk_size=chunk_size):
            yield message

    async with typed_errors():
        package: pb.Package = await stub.UploadPackage(messages(), timeout=timeout)
        return package


async def download_package(
    stub: control_pb2_grpc.ControlServiceStub,
    package_id: str = "",
    *,
    max_size: int,
    timeout: float | None = None,
) -> ReceivedPackage:
    """A package's verified bytes (the active package when ``package_id`` is empty)."""
    request = pb.DownloadPackageRequest(id=package_id)
    async with typed_errors():
        return await receive_package(
            stub.DownloadPackage(request, timeout=timeout), max_size=max_size
        )


async def receive_package(
    messages: AsyncIterator[pb.PackageChunk],
    *,
    max_size: int,
    check_header: HeaderCheck | None = None,
) -> ReceivedPackage:
    """Read one header-then-data stream into verified bytes.

    ``check_header`` may refuse the stream as soon as its header is read, before any data is
    buffered.
    """
    header: pb.PackageHeader | None = None
    assembler: ChunkAssembler | None = None
    async for message in messages:
        if message.HasField("header"):
            if header is not None:
                raise InvalidArgument("package stream has a second header; send exactly one")
            header = message.header
            _check_announced(header)
            if check_header is not None:
                check_header(header)
            assembler = ChunkAssembler(
                expected_size=header.total_size,
                expected_digest=header.sha256,
                max_size=max_size,
                algorithm=SHA256,
            )
        elif assembler is None:
            raise InvalidArgument("package stream must start with a header message")
        else:
            assembler.add(message.data)
    if header is None or assembler is None:
        raise InvalidArgument("package stream was empty: expected a header and data chunks")
    return ReceivedPackage(header=header, data=assembler.finish())


def _check_announced(header: pb.PackageHeader) -> None:
    if header.total_size <= 0:
        raise InvalidArgument("package header must announce total_size (the tarball's bytes)")
    if not header.sha256:
        raise InvalidArgument("package header must announce the tarball's sha256")
