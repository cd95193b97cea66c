"""Model store on MongoDB GridFS.

Each upload gets a fresh ObjectId as its GridFS ``_id`` and the model id as its ``filename``,
which a unique index makes the key. GridFS inserts the files document only after the last
chunk, so that insert is the atomic publish; a second upload of the same id fails on the unique
index. Why not the model id as ``_id``: ``GridIn.abort()`` deletes *every* chunk and file with
its ``_id``, so an upload racing another of the same id (or a retry after a crash) would delete
the other's chunks, or even the published model. With private ``_id``s an abort only ever
removes its own chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from bson import ObjectId
from gridfs import GridFSBucket, GridIn, GridOut
from gridfs.errors import CorruptGridFile, FileExists, NoFile
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, PyMongoError

from fedgrpc.errors import AlreadyExists, DataLoss, NotFound, Unavailable
from fedgrpc.model.chunking import (
    BLAKE3,
    DEFAULT_CHUNK_SIZE,
    Buffer,
    DigestAlgorithm,
    StreamVerifier,
    check_chunk_size,
)
from fedgrpc.modelstore.base import ModelStore, StoredModel, validate_model_id

logger = logging.getLogger(__name__)

_UNIQUE_ID_INDEX = "fedgrpc_model_id_unique"


class GridFSModelStore(ModelStore):
    """Models in the GridFS bucket ``bucket`` of ``database``; the caller owns the client."""

    def __init__(
        self,
        database: Database[Any],
        *,
        bucket: str = "models",
        max_size: int | None = None,
    ) -> None:
        self.max_size = max_size
        self.bucket_name = bucket
        self._files = database[f"{bucket}.files"]
        with self._mongo_errors("creating the model id index"):
            self._files.create_index("filename", unique=True, name=_UNIQUE_ID_INDEX)
            self._bucket = GridFSBucket(database, bucket_name=bucket)

    def put(
        self,
        model_id: str,
        chunks: Iterable[Buffer],
        *,
        expected_size: int | None = None,
        expected_digest: str | None = None,
        durable: bool = True,  # GridFS: the database's write concern decides durability
        verified_digest: str | None = None,
        algorithm: DigestAlgorithm = BLAKE3,
    ) -> StoredModel:
        validate_model_id(model_id)
        verifier = self._verifier(
            expected_size=expected_size,
            expected_digest=expected_digest,
            verified_digest=verified_digest,
            algorithm=algorithm,
        )
        with self._mongo_errors(f"storing model {model_id!r}"):
            # Fail before receiving the payload; the unique index is the real guarantee.
            if self._find(model_id) is not None:
                raise AlreadyExists(f"model {model_id!r} already exists")
            upload = self._bucket.open_upload_stream_with_id(ObjectId(), model_id)
            try:
                _write_verified(upload, chunks, verifier)
            except FileExists:
                _abort_quietly(upload, model_id)
                raise AlreadyExists(f"model {model_id!r} already exists") from None
            except BaseException:
                _abort_quietly(upload, model_id)
                raise
        return StoredModel(model_id=model_id, size=verifier.received, digest=verifier.digest)

    def get(self, model_id: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        check_chunk_size(chunk_size)
        with self._mongo_errors(f"reading model {model_id!r}"):
            stored = self._require(model_id)
            try:
                download = self._bucket.open_download_stream(stored["_id"])
            except NoFile:
                raise NotFound(f"model {model_id!r} was deleted while being opened") from None
        return self._read_chunks(download, model_id, chunk_size)

    def delete(self, model_id: str) -> bool:
        with self._mongo_errors(f"deleting model {model_id!r}"):
            stored = self._find(model_id)
            if stored is None:
                return False
            try:
                self._bucket.delete(stored["_id"])
            except NoFile:
                return False  # a concurrent delete won
        return True

    def exists(self, model_id: str) -> bool:
        with self._mongo_errors(f"looking up model {model_id!r}"):
            return self._find(model_id) is not None

    def size(self, model_id: str) -> int:
        with self._mongo_errors(f"looking up model {model_id!r}"):
            return int(self._require(model_id)["length"])

    def close(self) -> None:
        """Nothing to release: the MongoClient belongs to the caller."""

    def __repr__(self) -> str:
        return f"GridFSModelStore({self._files.database.name!r}, bucket={self.bucket_name!r})"

    def _find(self, model_id: str) -> Mapping[str, Any] | None:
        validate_model_id(model_id)
        found: Mapping[str, Any] | None = self._files.find_one(
            {"filename": model_id}, projection={"_id": 1, "length": 1}
        )
        return found

    def _require(self, model_id: str) -> Mapping[str, Any]:
        stored = self._find(model_id)
        if stored is None:
            raise NotFound(f"model {model_id!r} not found in GridFS bucket {self.bucket_name!r}")
        return stored

    def _read_chunks(self, download: GridOut, model_id: str, chunk_size: int) -> Iterator[bytes]:
        with self._mongo_errors(f"reading model {model_id!r}"), download:
            try:
                while chunk := download.read(chunk_size):
                    yield chunk
            except (CorruptGridFile, NoFile) as exc:
                raise DataLoss(f"model {model_id!r} is incomplete in GridFS: {exc}") from exc

    @contextmanager
    def _mongo_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except ConnectionFailure as exc:
            raise Unavailable(
                f"MongoDB unreachable while {action} (GridFS bucket {self.bucket_name!r}): {exc}"
            ) from exc


def _write_verified(upload: GridIn, chunks: Iterable[Buffer], verifier: StreamVerifier) -> None:
    for chunk in chunks:
        verifier.update(chunk)
        # GridIn accepts only bytes (not memoryview/bytearray).
        upload.write(chunk if isinstance(chunk, bytes) else bytes(chunk))
    verifier.finish()
    upload.metadata = {verifier.algorithm.name: verifier.digest}
    upload.close()


def _abort_quietly(upload: GridIn, model_id: str) -> None:
    # The original failure is what the caller needs to see. If the abort cannot reach the
    # server, the leftovers are chunks under a private ObjectId with no files document:
    # invisible, and never confused with another upload.
    try:
        upload.abort()
    except PyMongoError as exc:
        logger.warning("could not remove the partial upload of model %r: %s", model_id, exc)
