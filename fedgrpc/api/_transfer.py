"""Bytes in and out of the controller: seed models, model downloads, compute packages.

Downloads are verified (size and digest from the stream's header) while they are written to a
temporary file beside the destination, which replaces the destination only once the whole
stream checked out, so a failed download never leaves a truncated file behind.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import numpy as np

from fedgrpc.api._rpc import Metadata, RpcClient
from fedgrpc.errors import InvalidArgument
from fedgrpc.model.chunking import DEFAULT_CHUNK_SIZE, DigestAlgorithm, StreamVerifier
from fedgrpc.model.serialization import dump_model, load_model
from fedgrpc.proto.control.v1 import control_pb2
from fedgrpc.proto.model.v1 import model_pb2, model_pb2_grpc
from fedgrpc.transfer import dict_to_struct, model_stream

PathLike = str | os.PathLike[str]
# One message of a download: the header's (total_size, digest), or a slice of the data.
Part = tuple[int, str] | bytes
# np.savez names positional arrays arr_0, arr_1, ...; FEDn's list models use "0", "1", ...
_POSITIONAL = re.compile(r"arr_(\d+)")


class ModelClient(RpcClient):
    """The controller's ``ModelService`` (chunked model bytes), with typed errors."""

    def __init__(self, channel: grpc.Channel, *, metadata: Metadata = ()) -> None:
        super().__init__(channel, metadata=metadata)
        self._stub = model_pb2_grpc.ModelServiceStub(channel)

    def upload(self, data: bytes, *, name: str) -> model_pb2.UploadResponse:
        header = model_pb2.ModelHeader(metadata=dict_to_struct({"name": name}))
        messages = model_stream(data, header=header)
        return self._stream_unary(
            self._stub.Upload, messages, model_pb2.UploadResponse, timeout=None, metadata=None
        )

    def download(self, model_id: str) -> Iterator[Part]:
        request = model_pb2.DownloadRequest(model_id=model_id)
        chunks = self._unary_stream(
            self._stub.Download, request, model_pb2.ModelChunk, timeout=None, metadata=None
        )
        for chunk in chunks:
            if chunk.HasField("header"):
                yield chunk.header.total_size, chunk.header.digest
            else:
                yield chunk.data


def package_parts(chunks: Iterable[control_pb2.PackageChunk]) -> Iterator[Part]:
    """A DownloadPackage stream as header and data parts."""
    for chunk in chunks:
        if chunk.HasField("header"):
            yield chunk.header.total_size, chunk.header.sha256
        else:
            yield chunk.data


def receive_to_file(
    parts: Iterable[Part], path: PathLike, what: str, algorithm: DigestAlgorithm
) -> str:
    """Write a header-then-data stream to ``path``, verified; returns its digest (in
    ``algorithm``: BLAKE3 for models, SHA-256 for packages)."""
    destination = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=destination.parent, prefix=".download-")
    try:
        with os.fdopen(descriptor, "wb") as file:
            verifier: StreamVerifier | None = None
            for part in parts:
                if isinstance(part, tuple):
                    size, digest = part
                    verifier = StreamVerifier(
                        expected_size=size, expected_digest=digest or None, algorithm=algorithm
                    )
                elif verifier is None:
                    raise InvalidArgument(f"the {what} stream did not start with a header")
                else:
                    verifier.update(part)
                    file.write(part)
            if verifier is None:
                raise InvalidArgument(f"the {what} stream was empty")
            verifier.finish()  # TruncatedStream / ChecksumMismatch
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return verifier.digest


# --- seed models -----------------------------------------------------------------------------


def read_seed_model(path: PathLike) -> bytes:
    """A seed model file as safetensors bytes, checked before anything is uploaded.

    ``.safetensors`` is sent as it is; ``.npz`` is loaded without pickle (object arrays are
    refused) and converted, ``arr_0``, ``arr_1``... becoming FEDn's ``"0"``, ``"1"``...
    """
    source = Path(path)
    suffix = source.suffix.lower()
    if suffix == ".safetensors":
        data = source.read_bytes()
        load_model(data)  # MalformedModel (InvalidArgument) before a byte is sent
        return data
    if suffix == ".npz":
        return dump_model(_load_npz(source))
    raise InvalidArgument(f"{source}: a seed model must be a .safetensors or .npz file")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InvalidArgument(f"{path}: not a readable pickle-free .npz file: {exc}") from None
    positions = [_POSITIONAL.fullmatch(name) for name in arrays]
    if arrays and all(positions):
        return {match.group(1): arrays[match.string] for match in positions if match}
    return arrays


# --- compute packages ------------------------------------------------------------------------


def package_stream(
    path: PathLike, *, helper: str, name: str | None, description: str | None
) -> Iterator[control_pb2.PackageChunk]:
    """The UploadPackage messages for a tarball: its header, then its bytes read from disk.

    The header is built here, before the call starts, so an unreadable file fails as itself
    rather than as a cancelled upload.
    """
    source = Path(path)
    digest = hashlib.sha256()
    for block in _blocks(source):
        digest.update(block)
    header = control_pb2.PackageHeader(
        name=name or source.name,
        description=description or "",
        file_name=source.name,
        total_size=source.stat().st_size,
        sha256=digest.hexdigest(),
        helper=helper,
    )
    first = control_pb2.PackageChunk(header=header)
    return itertools.chain([first], (control_pb2.PackageChunk(data=b) for b in _blocks(source)))


def _blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while block := file.read(DEFAULT_CHUNK_SIZE):
            yield block
