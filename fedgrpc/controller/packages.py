"""Compute packages on the controller: upload, the active package, downloads, client config.

An upload is received whole (size capped while it streams, sha256 checked at the end), then
inspected (:func:`fedgrpc.packages.inspect_package`), and only then stored: the tarball in the
model store under ``package-<uuid hex>``, the record in the statestore. Any failure before the
record exists removes the blob again, so a refused upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

from fedgrpc.controller.network import Network
from fedgrpc.errors import InvalidArgument, NotFound
from fedgrpc.model.chunking import SHA256
from fedgrpc.packages import DEFAULT_LIMITS, Manifest, PackageLimits, inspect_package
from fedgrpc.packages.transfer import ReceivedPackage, receive_package
from fedgrpc.proto.control.v1 import control_pb2 as pb
from fedgrpc.statestore import ListResult, Record, StateStore

BLOB_PREFIX = "package-"
DEFAULT_HELPER = "numpyhelper"  # FEDn's default; models travel as safetensors regardless
_MAX_TEXT = {"name": 128, "file_name": 255, "helper": 64, "description": 4096}


def package_limits(network: Network) -> PackageLimits:
    """The package caps; never above what the model store (which keeps the blob) accepts."""
    max_size = min(DEFAULT_LIMITS.max_size, network.config.max_model_size)
    return replace(DEFAULT_LIMITS, max_size=max_size)


async def upload(network: Network, messages: AsyncIterator[pb.PackageChunk]) -> Record:
    limits = package_limits(network)
    received = await receive_package(messages, max_size=limits.max_size, check_header=check_header)
    manifest = await asyncio.to_thread(inspect_package, received.data, **limits.as_kwargs())
    # Blob and record in one worker call: a caller hanging up mid-way cannot split them.
    return await asyncio.to_thread(_store, network, received, manifest)


def check_header(header: pb.PackageHeader) -> None:
    for field, limit in _MAX_TEXT.items():
        if len(getattr(header, field)) > limit:
            raise InvalidArgument(f"package header {field} is over {limit} characters")
    name = header.file_name
    if name and (PurePosixPath(name).name != name or name in (".", "..") or "\\" in name):
        raise InvalidArgument(f"package file_name {name!r} must be a bare file name")


def _store(network: Network, received: ReceivedPackage, manifest: Manifest) -> Record:
    header = received.header
    blob_id = f"{BLOB_PREFIX}{uuid.uuid4().hex}"
    stored = network.models.put_bytes(
        blob_id, received.data, verified_digest=received.header.sha256.lower(), algorithm=SHA256
    )
    file_name = header.file_name or "package.tar.gz"
    try:
        return network.store.packages.create(
            name=header.name or manifest.name or file_name.split(".")[0] or "package",
            description=header.description or None,
            file_name=file_name,
            sha256=stored.digest,
            size=stored.size,
            helper=header.helper or DEFAULT_HELPER,
            blob_id=blob_id,
            entry_points=manifest.specs(),
            requirements=list(manifest.requirements),
        )
    except BaseException:
        network.models.delete(blob_id)
        raise


# --- records --------------------------------------------------------------------------------


def active_id(store: StateStore) -> str | None:
    try:
        return str(store.packages.get_active()["id"])
    except NotFound:
        return None


def with_active_flag(store: StateStore, records: list[Record]) -> list[Record]:
    active = active_id(store)
    return [{**record, "active": record["id"] == active} for record in records]


def get(store: StateStore, package_id: str) -> Record:
    return with_active_flag(store, [store.packages.get(package_id)])[0]


def get_active(store: StateStore) -> Record:
    try:
        record = store.packages.get_active()
    except NotFound as exc:
        raise NotFound(
            f"{exc.message}; upload one with UploadPackage, then SetActivePackage"
        ) from None
    return {**record, "active": True}


def set_active(store: StateStore, package_id: str) -> Record:
    store.packages.set_active(package_id)
    return get(store, package_id)


def list_packages(store: StateStore, **args: Any) -> ListResult:
    found = store.packages.list(**args)
    return {"count": found["count"], "result": with_active_flag(store, found["result"])}


def client_config(store: StateStore, *, controller: str, checksum: bool) -> Record:
    """FEDn's client config: where the controller is, and the active package if any."""
    try:
        active: Record | None = store.packages.get_active()
    except NotFound:
        active = None
    return {
        "controller": controller,
        "package_checksum": str(active["sha256"]) if active and checksum else "",
        "helper": str(active.get("helper") or DEFAULT_HELPER) if active else DEFAULT_HELPER,
        "package_id": str(active["id"]) if active else "",
    }


# --- downloads ------------------------------------------------------------------------------


async def download(network: Network, package_id: str) -> AsyncIterator[pb.PackageChunk]:
    """Header first (with the sha256 the client verifies against), then the tarball's bytes."""
    store = network.store
    if package_id:
        record = await asyncio.to_thread(get, store, package_id)
    else:
        record = await asyncio.to_thread(get_active, store)
    chunks = await asyncio.to_thread(
        network.models.get, str(record["blob_id"]), chunk_size=network.config.chunk_size
    )
    yield pb.PackageChunk(header=_header(record))
    try:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield pb.PackageChunk(data=chunk)
    finally:
        _close(chunks)


def _header(record: Record) -> pb.PackageHeader:
    return pb.PackageHeader(
        name=str(record.get("name") or ""),
        description=str(record.get("description") or ""),
        file_name=str(record.get("file_name") or ""),
        total_size=int(record["size"]),
        sha256=str(record["sha256"]),
        helper=str(record.get("helper") or ""),
        package_id=str(record["id"]),
    )


def _close(chunks: Iterator[bytes]) -> None:
    """Release the blob's file or cursor promptly when a download is cut short."""
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
