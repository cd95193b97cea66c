"""A client's side of ``--package-from-controller``: download, verify, extract into the cache.

The cache is ``$FEDGRPC_PACKAGE_CACHE`` when set, else ``~/.cache/fedgrpc/packages``; each
package lives in a directory named by its sha256, so clients on one machine share extractions
and a restarted client does not extract again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import grpc

from fedgrpc.errors import FedgrpcError, Unavailable
from fedgrpc.packages.archive import DEFAULT_LIMITS, PackageLimits
from fedgrpc.packages.extract import extract_package
from fedgrpc.packages.transfer import download_package
from fedgrpc.proto.control.v1 import control_pb2_grpc
from fedgrpc.rpc.channel import open_channel

log = logging.getLogger(__name__)

CACHE_ENV = "FEDGRPC_PACKAGE_CACHE"
# How long a client starting before its controller waits for it, and how long a download may
# take once connected.
CONNECT_TIMEOUT = 30.0
DOWNLOAD_TIMEOUT = 600.0


def default_cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "fedgrpc" / "packages"


async def fetch_package(
    controller: str,
    *,
    cache_dir: Path,
    max_message_size: int,
    package_id: str = "",
    limits: PackageLimits = DEFAULT_LIMITS,
    credentials: grpc.ChannelCredentials | None = None,
    token: str | None = None,
) -> Path:
    """The extracted directory of a package from ``controller`` (the active one by default).

    Refusals keep their error type and say which package was refused and why.
    """
    channel = open_channel(
        controller, max_message_size=max_message_size, credentials=credentials, token=token
    )
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            raise Unavailable(
                f"controller {controller} was not reachable within {CONNECT_TIMEOUT:g}s"
            ) from None
        stub = control_pb2_grpc.ControlServiceStub(channel)
        received = await download_package(
            stub, package_id, max_size=limits.max_size, timeout=DOWNLOAD_TIMEOUT
        )
    finally:
        await channel.close()
    header = received.header
    label = f"{header.package_id} ({header.name or header.file_name}, sha256 {header.sha256})"
    try:
        directory = await asyncio.to_thread(
            extract_package,
            received.data,
            cache_dir,
            expected_sha256=header.sha256,
            **limits.as_kwargs(),
        )
    except FedgrpcError as exc:
        raise type(exc)(f"refused package {label} from {controller}: {exc.message}") from None
    log.info("package %s ready in %s", label, directory)
    return directory
