"""Model store on a local directory: one file per model, published atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from fedgrpc.errors import AlreadyExists, NotFound
from fedgrpc.model.chunking import (
    BLAKE3,
    DEFAULT_CHUNK_SIZE,
    Buffer,
    DigestAlgorithm,
    StreamVerifier,
    check_chunk_size,
)
from fedgrpc.modelstore.base import ModelStore, StoredModel, validate_model_id

# Valid ids never start with '.', so in-progress uploads can never be mistaken for models.
_TEMP_PREFIX = "."
_TEMP_SUFFIX = ".partial"


class DirectoryModelStore(ModelStore):
    """Models as files ``root/<model_id>``.

    A put streams into a hidden temp file in the same directory, fsyncs it and then hard-links
    it to its final name: ``link`` is atomic and, unlike ``rename``, refuses to replace an
    existing file, so two racing puts of one id cannot overwrite each other.
    """

    def __init__(self, root: Path, *, max_size: int | None = None) -> None:
        self.root = Path(root)
        self._root_text = str(self.root)
        self.max_size = max_size
        self.root.mkdir(parents=True, exist_ok=True)

    def put(
        self,
        model_id: str,
        chunks: Iterable[Buffer],
        *,
        expected_size: int | None = None,
        expected_digest: str | None = None,
        durable: bool = True,
        verified_digest: str | None = None,
        algorithm: DigestAlgorithm = BLAKE3,
    ) -> StoredModel:
        final_path = self._path(model_id)
        verifier = self._verifier(
            expected_size=expected_size,
            expected_digest=expected_digest,
            verified_digest=verified_digest,
            algorithm=algorithm,
        )
        # Fail before receiving the payload; the link below is what actually guarantees it.
        if final_path.exists():
            raise AlreadyExists(f"model {model_id!r} already exists")
        fd, temp_name = tempfile.mkstemp(
            dir=self.root, prefix=f"{_TEMP_PREFIX}{model_id}.", suffix=_TEMP_SUFFIX
        )
        temp_path = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as temp_file:
                _write_verified(temp_file, chunks, verifier, durable=durable)
            _publish(temp_path, final_path, model_id, durable=durable)
        finally:
            temp_path.unlink(missing_ok=True)
        return StoredModel(model_id=model_id, size=verifier.received, digest=verifier.digest)

    def copy(
        self, source_id: str, model_id: str, *, verified_digest: str | None = None
    ) -> StoredModel:
        """A hard link to the source's file: no byte is read or written again, only forced to
        disk (the source may have been stored with ``durable=False``)."""
        source_path, final_path = self._path(source_id), self._path(model_id)
        try:
            fd = os.open(source_path, os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(f"model {source_id!r} not found") from None
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
            digest = verified_digest or _file_digest(fd)
        finally:
            os.close(fd)
        _publish(source_path, final_path, model_id, durable=True)
        return StoredModel(model_id=model_id, size=size, digest=digest)

    def get(self, model_id: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        check_chunk_size(chunk_size)
        path = self._path(model_id)
        try:
            # Opened now: NotFound surfaces here, and a concurrent delete cannot cut the read.
            model_file = path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"model {model_id!r} not found") from None
        return _read_chunks(model_file, chunk_size)

    def get_bytes(self, model_id: str) -> bytes:
        """One read into one buffer (the chunked default joins: twice the model in memory)."""
        try:
            return self._path(model_id).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"model {model_id!r} not found") from None

    def delete(self, model_id: str) -> bool:
        try:
            self._path(model_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def exists(self, model_id: str) -> bool:
        # os.path, not pathlib (3 us against 8): the embedded store asks this under the
        # statestore's write lock for every model it keeps as a row.
        return os.path.isfile(os.path.join(self._root_text, validate_model_id(model_id)))

    def size(self, model_id: str) -> int:
        try:
            return self._path(model_id).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"model {model_id!r} not found") from None

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    def __repr__(self) -> str:
        return f"DirectoryModelStore({str(self.root)!r}, max_size={self.max_size})"

    def _path(self, model_id: str) -> Path:
        return self.root / validate_model_id(model_id)


def _write_verified(
    target: BinaryIO, chunks: Iterable[Buffer], verifier: StreamVerifier, *, durable: bool
) -> None:
    for chunk in chunks:
        verifier.update(chunk)
        target.write(chunk)
    verifier.finish()
    target.flush()
    if durable:
        os.fsync(target.fileno())


def _publish(temp_path: Path, final_path: Path, model_id: str, *, durable: bool) -> None:
    try:
        os.link(temp_path, final_path)
    except FileExistsError:
        raise AlreadyExists(f"model {model_id!r} already exists") from None
    if durable:
        _fsync_directory(final_path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the new directory entry itself survive a crash, not just the file's contents.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_digest(fd: int) -> str:
    hasher = BLAKE3.new()
    with os.fdopen(os.dup(fd), "rb") as model_file:
        while chunk := model_file.read(DEFAULT_CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()


def _read_chunks(model_file: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    with model_file:
        while chunk := model_file.read(chunk_size):
            yield chunk
