"""Extracting a package into a cache directory keyed by its sha256, safely and atomically.

``<cache>/<sha256>/`` appears only complete: files go to a hidden temporary directory next to
it, which is renamed into place once every member is written. A directory by that name is
therefore always a fully checked extraction of exactly those bytes, so a second call (or a
second client on the same machine) reuses it instead of extracting again.
"""

from __future__ import annotations

import copy
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from fedgrpc.errors import ChecksumMismatch, FailedPrecondition
from fedgrpc.model.chunking import sha256_hex
from fedgrpc.packages.archive import (
    DEFAULT_LIMITS,
    PackageLimits,
    inspect_package,
    open_archive,
    scan,
)

# tarfile's "data" filter (Python 3.12, backported to 3.10.12/3.11.4) re-checks every member
# for paths and links outside the destination; our own checks in scan() run first regardless.
_DATA_FILTER: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def extract_package(
    data: bytes,
    destination: Path,
    *,
    expected_sha256: str,
    max_size: int = DEFAULT_LIMITS.max_size,
    max_members: int = DEFAULT_LIMITS.max_members,
    max_extracted_size: int = DEFAULT_LIMITS.max_extracted_size,
) -> Path:
    """Extract into ``destination/<sha256>`` (reused when present); returns that directory.

    DataLoss when ``data`` does not hash to ``expected_sha256``; InvalidArgument or
    ResourceExhausted for a package that fails the checks of :func:`inspect_package`.
    Nothing is left under ``destination`` on any failure.
    """
    actual = sha256_hex(data)
    if actual != expected_sha256.strip().lower():
        raise ChecksumMismatch(
            f"package sha256 mismatch: expected {expected_sha256}, the bytes hash to {actual}"
        )
    final = Path(destination) / actual
    if final.is_dir():
        return final
    limits = PackageLimits(
        max_size=max_size, max_members=max_members, max_extracted_size=max_extracted_size
    )
    inspect_package(data, **limits.as_kwargs())
    try:
        _publish(data, Path(destination), final, limits)
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot write the package cache {destination}: {exc.strerror or exc}"
        ) from None
    return final


def _publish(data: bytes, destination: Path, final: Path, limits: PackageLimits) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    # Hidden and suffixed: never mistaken for a finished extraction (those are bare sha256s).
    staging = Path(
        tempfile.mkdtemp(prefix=f".{final.name[:16]}-", suffix=".partial", dir=destination)
    )
    try:
        _extract_into(data, staging, limits)
        try:
            staging.rename(final)
        except OSError:
            if not final.is_dir():  # another process published the same sha first: use it
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _extract_into(data: bytes, target: Path, limits: PackageLimits) -> None:
    with open_archive(data, limits) as tar:
        for member, path in scan(tar, limits):
            tar.extract(_normalized(member, path), target, **_DATA_FILTER)


def _normalized(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """The checked name, ordinary permissions, and this user as owner (no setuid, no chown)."""
    safe = copy.copy(member)
    safe.name = path
    safe.mode = 0o755 if member.isdir() or member.mode & 0o100 else 0o644
    safe.uid, safe.gid, safe.uname, safe.gname = os.getuid(), os.getgid(), "", ""
    return safe
