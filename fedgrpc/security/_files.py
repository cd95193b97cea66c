"""Reading and writing key material: private files are 0600 from the first byte on disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fedgrpc.errors import InvalidArgument

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644

PathLike = str | os.PathLike[str]


def read_file(path: PathLike, what: str) -> bytes:
    """The bytes of ``path``; a missing or unreadable file is an InvalidArgument naming ``what``."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidArgument(f"{what} {os.fspath(path)!r} does not exist") from None
    except OSError as exc:
        raise InvalidArgument(
            f"{what} {os.fspath(path)!r} cannot be read: {exc.strerror or exc}"
        ) from None


def write_file(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` atomically (temp file + rename) with mode 0600 (private) or 0644.

    ``mkstemp`` creates the temp file 0600, so a private key is never readable by others, not
    even for the moment between creating and renaming it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp_name, PRIVATE_MODE if private else PUBLIC_MODE)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def refuse_overwrite(paths: list[Path], *, force: bool) -> None:
    """Key material is never replaced by accident: existing files need ``force``."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise InvalidArgument(f"refusing to overwrite {', '.join(existing)} (use --force)")
