"""Building a package tarball from a directory, byte-for-byte reproducibly.

The same directory contents always give the same bytes (and so the same sha256): members are
sorted, mtimes are 0, owners are 0/0 without names, modes are 0755 (directories and files with
an execute bit) or 0644, and the gzip header carries no file name or time. ``__pycache__``,
``.git`` and compiled ``*.pyc``/``*.pyo`` files are left out.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Collection, Iterator
from pathlib import Path

from fedgrpc.errors import InvalidArgument
from fedgrpc.packages.archive import inspect_package
from fedgrpc.packages.manifest import MANIFEST_NAME

EXCLUDED_NAMES = frozenset({"__pycache__", ".git"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")


def build_package(directory: Path, *, exclude: Collection[Path] = ()) -> bytes:
    """A gzipped tarball of ``directory`` (which must hold ``fedgrpc.yaml``), checked as the
    controller will check it. ``exclude`` lists files to leave out (e.g. the output file)."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise InvalidArgument(f"{directory} is not a directory")
    if not (root / MANIFEST_NAME).is_file():
        raise InvalidArgument(f"{directory} has no {MANIFEST_NAME}")
    skipped = {Path(path).resolve() for path in exclude}
    buffer = io.BytesIO()
    # mtime=0 and no file name keep the gzip header identical from one build to the next.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for relative, path in sorted(_walk(root, skipped)):
            _add(tar, relative, path)
    data = buffer.getvalue()
    inspect_package(data)  # never hand out a package the controller would refuse
    return data


def _walk(root: Path, skipped: set[Path]) -> Iterator[tuple[str, Path]]:
    for current, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames if name not in EXCLUDED_NAMES]
        for name in [*dirnames, *filenames]:
            path = Path(current) / name
            if name.endswith(EXCLUDED_SUFFIXES) or path in skipped:
                continue
            yield path.relative_to(root).as_posix(), path


def _add(tar: tarfile.TarFile, relative: str, path: Path) -> None:
    info = tarfile.TarInfo(relative)
    mode = path.lstat().st_mode
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if stat.S_ISDIR(mode):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    elif stat.S_ISREG(mode):
        info.size = path.stat().st_size
        info.mode = 0o755 if mode & 0o111 else 0o644
        with path.open("rb") as source:
            tar.addfile(info, source)
    else:
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file or directory"
        raise InvalidArgument(
            f"{path} is {kind}; packages hold only files and directories (copy the target in)"
        )
