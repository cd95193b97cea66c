"""Package tarballs built byte by byte for the tests: one good, and one per kind of attack.

The attacks are built with ``tarfile.TarInfo.tobuf`` rather than ``tarfile.add`` so that each
one is exactly the hostile member it claims to be, whatever the local file system allows.
"""

from __future__ import annotations

import gzip
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

from fedgrpc.errors import FedgrpcError, InvalidArgument, ResourceExhausted
from fedgrpc.packages import DEFAULT_LIMITS

BLOCK = tarfile.BLOCKSIZE
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
GOOD_MANIFEST = b"name: tiny\nentry_points:\n  train: client:train\n"
CLIENT_SOURCE = b"def train(model, settings):\n    return model, {'num_examples': 1}\n"


def member(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    """One raw member: its header (PAX when needed) and its data padded to whole blocks."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    return info.tobuf(format=tarfile.PAX_FORMAT) + data + _padding(len(data))


def good_members() -> bytes:
    return member("fedgrpc.yaml", GOOD_MANIFEST) + member("client.py", CLIENT_SOURCE)


def tarball(*members: bytes) -> bytes:
    return gzip.compress(b"".join(members) + END_OF_ARCHIVE, mtime=0)


def good_tarball() -> bytes:
    return tarball(good_members())


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def too_many_members() -> bytes:
    extra = b"".join(member(f"data/{i:05d}.txt") for i in range(DEFAULT_LIMITS.max_members))
    return tarball(good_members(), extra)


def gzip_bomb() -> bytes:
    """~1 MB of gzip that expands to 1 GiB of zeros in one member: concatenated gzip members
    (which gzip readers must accept) repeat one compressed 16 MiB block of zeros."""
    size = DEFAULT_LIMITS.max_extracted_size + BLOCK
    header = tarfile.TarInfo("zeros.bin")
    header.size = size
    block = 16 << 20
    repeats, rest = divmod(size, block)
    return b"".join(
        [
            gzip.compress(good_members() + header.tobuf(format=tarfile.PAX_FORMAT), mtime=0),
            gzip.compress(b"\0" * block, mtime=0) * repeats,
            gzip.compress(b"\0" * rest + _padding(size) + END_OF_ARCHIVE, mtime=0),
        ]
    )


@dataclass(frozen=True)
class BadPackage:
    """A hostile tarball, the error it must raise, and words its message must contain."""

    build: Callable[[], bytes]
    error: type[FedgrpcError]
    says: str


BAD_PACKAGES: dict[str, BadPackage] = {
    "absolute-path": BadPackage(
        lambda: tarball(good_members(), member("/tmp/evil.py", b"x")),
        InvalidArgument,
        "'/tmp/evil.py' is an absolute path",
    ),
    "dot-dot": BadPackage(
        lambda: tarball(good_members(), member("../evil.py", b"x")),
        InvalidArgument,
        "'../evil.py' has a '..' component",
    ),
    "dot-dot-nested": BadPackage(
        lambda: tarball(good_members(), member("lib/../../evil.py", b"x")),
        InvalidArgument,
        "'lib/../../evil.py' has a '..' component",
    ),
    "symlink-out": BadPackage(
        lambda: tarball(good_members(), member("data", kind=tarfile.SYMTYPE, link="/etc")),
        InvalidArgument,
        "'data' is a symbolic link to '/etc'",
    ),
    "symlink-inside": BadPackage(
        lambda: tarball(good_members(), member("alias.py", kind=tarfile.SYMTYPE, link="client.py")),
        InvalidArgument,
        "'alias.py' is a symbolic link",
    ),
    "hardlink-out": BadPackage(
        lambda: tarball(
            good_members(), member("passwd", kind=tarfile.LNKTYPE, link="../../etc/passwd")
        ),
        InvalidArgument,
        "'passwd' is a hard link to '../../etc/passwd'",
    ),
    "char-device": BadPackage(
        lambda: tarball(good_members(), member("null", kind=tarfile.CHRTYPE)),
        InvalidArgument,
        "'null' is a device file",
    ),
    "block-device": BadPackage(
        lambda: tarball(good_members(), member("sda", kind=tarfile.BLKTYPE)),
        InvalidArgument,
        "'sda' is a device file",
    ),
    "fifo": BadPackage(
        lambda: tarball(good_members(), member("pipe", kind=tarfile.FIFOTYPE)),
        InvalidArgument,
        "'pipe' is a FIFO",
    ),
    "duplicate-member": BadPackage(
        lambda: tarball(good_members(), member("client.py", b"import os\n")),
        InvalidArgument,
        "'client.py' appears twice",
    ),
    "too-many-members": BadPackage(
        too_many_members,
        ResourceExhausted,
        f"more than {DEFAULT_LIMITS.max_members} members",
    ),
    "gzip-bomb": BadPackage(
        gzip_bomb,
        ResourceExhausted,
        f"'zeros.bin' ({DEFAULT_LIMITS.max_extracted_size + BLOCK} bytes) takes the package over",
    ),
    "missing-manifest": BadPackage(
        lambda: tarball(member("client.py", CLIENT_SOURCE)),
        InvalidArgument,
        "no fedgrpc.yaml at its root",
    ),
    "manifest-names-missing-module": BadPackage(
        lambda: tarball(
            member("fedgrpc.yaml", b"entry_points:\n  train: trainer:train\n"),
            member("client.py", CLIENT_SOURCE),
        ),
        InvalidArgument,
        "needs trainer.py or trainer/__init__.py, which is not in the package",
    ),
    "manifest-names-missing-script": BadPackage(
        lambda: tarball(member("fedgrpc.yaml", b"entry_points:\n  train: python run.py\n")),
        InvalidArgument,
        "needs run.py",
    ),
    "bad-yaml": BadPackage(
        lambda: tarball(member("fedgrpc.yaml", b"entry_points: [train\n"), member("client.py")),
        InvalidArgument,
        "fedgrpc.yaml is not valid YAML",
    ),
    "not-gzip": BadPackage(
        lambda: good_members() + END_OF_ARCHIVE,
        InvalidArgument,
        "gzip-compressed tar archive",
    ),
}
