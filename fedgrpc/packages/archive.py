"""Reading package tarballs without trusting them: every member is checked before it is used.

A package is a gzip-compressed tar archive. The rules, applied identically by the controller
(on upload) and the client (before extracting):

- members are regular files or directories only: symbolic links and hard links are refused
  whatever they point to (being strict costs nothing and removes a whole class of escapes),
  as are device files, FIFOs, sparse and other special members;
- names are relative POSIX paths: no leading ``/``, no drive letter, no ``..`` component, no
  backslash or control character, no member twice, no member inside a file;
- at most ``max_members`` members and ``max_extracted_size`` bytes of file data; the
  decompressed stream itself is bounded too, so a gzip bomb hidden in a PAX or long-name
  header is cut off before it is buffered;
- ``fedgrpc.yaml`` at the root, valid, and naming only files that are in the archive.

Archives are read as a stream (``tarfile`` mode ``r|``): nothing is seeked or extracted while
checking, and the first violation stops the read with a message naming the member.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

from fedgrpc.errors import InvalidArgument, ResourceExhausted
from fedgrpc.packages.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_SIZE,
    Manifest,
    check_references,
    parse_manifest,
)

MiB = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
# A header block, its padding and a PAX record per member, generously.
_MEMBER_OVERHEAD = 8 * 1024
_MAX_PATH = 1024
_BAD_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\\]")
_DRIVE = re.compile(r"[A-Za-z]:")
_ALLOWED_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)


@dataclass(frozen=True, kw_only=True)
class PackageLimits:
    """Caps on a package: tarball bytes, member count, and bytes once extracted."""

    max_size: int = 256 * MiB
    max_members: int = 10_000
    max_extracted_size: int = 1024 * MiB

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidArgument(f"package limit {name} must be a positive integer")

    def as_kwargs(self) -> dict[str, int]:
        return asdict(self)

    @property
    def stream_limit(self) -> int:
        """Most decompressed bytes an archive within the caps can need."""
        return self.max_extracted_size + (self.max_members + 2) * _MEMBER_OVERHEAD


DEFAULT_LIMITS = PackageLimits()


def inspect_package(
    data: bytes,
    *,
    max_size: int = DEFAULT_LIMITS.max_size,
    max_members: int = DEFAULT_LIMITS.max_members,
    max_extracted_size: int = DEFAULT_LIMITS.max_extracted_size,
) -> Manifest:
    """Validate a package tarball without extracting it; its manifest if every check passes.

    InvalidArgument for a bad member or manifest, ResourceExhausted over a cap; the message
    names the member and the reason.
    """
    limits = PackageLimits(
        max_size=max_size, max_members=max_members, max_extracted_size=max_extracted_size
    )
    files: set[str] = set()
    manifest_text: bytes | None = None
    with open_archive(data, limits) as tar:
        for member, path in scan(tar, limits):
            if member.isfile():
                files.add(path)
            if path == MANIFEST_NAME and member.isfile():
                manifest_text = _read_manifest(tar, member)
    if manifest_text is None:
        raise InvalidArgument(f"the package has no {MANIFEST_NAME} at its root")
    manifest = parse_manifest(manifest_text, source=f"the package's {MANIFEST_NAME}")
    check_references(manifest, files.__contains__)
    return manifest


@contextmanager
def open_archive(data: bytes, limits: PackageLimits) -> Iterator[tarfile.TarFile]:
    """A streaming reader over a gzipped tarball that never decompresses past the caps."""
    if len(data) > limits.max_size:
        raise ResourceExhausted(
            f"the package is {len(data)} bytes, over the limit of {limits.max_size} bytes"
        )
    if not data.startswith(GZIP_MAGIC):
        raise InvalidArgument("a package must be a gzip-compressed tar archive (.tar.gz)")
    try:
        with (
            gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as decompressed,
            tarfile.open(  # type: ignore[call-overload]
                fileobj=_BoundedReader(decompressed, limits), mode="r|"
            ) as tar,
        ):
            yield tar
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise InvalidArgument(f"the package is not a valid gzipped tar archive: {exc}") from None


def scan(tar: tarfile.TarFile, limits: PackageLimits) -> Iterator[tuple[tarfile.TarInfo, str]]:
    """Each member with its checked relative path; the root entry (``.``) is skipped."""
    tree = _Tree()
    extracted = 0
    for count, member in enumerate(tar, start=1):
        if count > limits.max_members:
            raise ResourceExhausted(
                f"the package has more than {limits.max_members} members "
                f"(stopped at {member.name!r})"
            )
        path = check_member(member)
        if path is None:
            continue
        extracted += member.size if member.isfile() else 0
        if extracted > limits.max_extracted_size:
            raise ResourceExhausted(
                f"package member {path!r} ({member.size} bytes) takes the package over "
                f"{limits.max_extracted_size} bytes extracted"
            )
        tree.add(path, is_dir=member.isdir())
        yield member, path


def check_member(member: tarfile.TarInfo) -> str | None:
    """The member's normalized relative path (None for the root directory entry).

    InvalidArgument naming the member for anything but a safely named file or directory.
    """
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or _DRIVE.match(name):
        _refuse(name, "is an absolute path; members must be relative to the package root")
    if ".." in path.parts:
        _refuse(name, "has a '..' component, which could write outside the package")
    if _BAD_CHARACTERS.search(name) or len(name) > _MAX_PATH:
        _refuse(name, f"has a backslash or control character, or is over {_MAX_PATH} characters")
    _check_type(member)
    parts = [part for part in path.parts if part not in ("", ".")]
    if not parts:
        if not member.isdir():
            _refuse(name, "is a file without a name")
        return None
    return "/".join(parts)


def _check_type(member: tarfile.TarInfo) -> None:
    if member.issym() or member.islnk():
        kind = "a symbolic link" if member.issym() else "a hard link"
        _refuse(
            member.name,
            f"is {kind} to {member.linkname!r}; packages may not contain links of any kind",
        )
    if member.ischr() or member.isblk():
        _refuse(member.name, "is a device file")
    if member.isfifo():
        _refuse(member.name, "is a FIFO")
    if member.type not in _ALLOWED_TYPES:
        _refuse(member.name, f"has unsupported type {member.type!r}; only files and directories")


def _refuse(name: str, reason: str) -> None:
    raise InvalidArgument(f"package member {name!r} {reason}")


class _Tree:
    """The paths seen so far: catches duplicates and members hidden under a file's name."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.dirs: set[str] = set()

    def add(self, path: str, *, is_dir: bool) -> None:
        parents = [str(parent) for parent in PurePosixPath(path).parents][:-1]
        for parent in parents:
            if parent in self.files:
                _refuse(path, f"is inside {parent!r}, which is a file")
        if path in self.files or (not is_dir and path in self.dirs):
            _refuse(path, "appears twice in the archive")
        self.dirs.update(parents)
        (self.dirs if is_dir else self.files).add(path)


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_MANIFEST_SIZE:
        _refuse(member.name, f"is larger than {MAX_MANIFEST_SIZE} bytes")
    source = tar.extractfile(member)
    assert source is not None  # for mypy: a regular file always has a reader
    return source.read()


class _BoundedReader:
    """Reads a decompressing stream and refuses to go past the decompressed-size cap.

    ``tarfile`` buffers PAX and GNU long-name headers whole, so without this cap a small
    tarball could make it allocate gigabytes before any member check runs.
    """

    def __init__(self, source: io.BufferedIOBase, limits: PackageLimits) -> None:
        self._source = source
        self._limit = limits.stream_limit
        self._limits = limits
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        allowed = self._limit - self.consumed + 1  # one byte past the cap proves it is exceeded
        chunk = self._source.read(allowed if size is None or size < 0 else min(size, allowed))
        self.consumed += len(chunk)
        if self.consumed > self._limit:
            raise ResourceExhausted(
                f"the package decompresses to more than {self._limit} bytes "
                f"(limits: {self._limits.max_extracted_size} bytes of files, "
                f"{self._limits.max_members} members)"
            )
        return chunk
