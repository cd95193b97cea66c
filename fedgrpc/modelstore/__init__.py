"""Streamed, verified, all-or-nothing storage of model blobs: embedded (small models in the
statestore's SQLite file, large ones in a directory), on a directory or in GridFS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pymongo.database import Database

from fedgrpc.errors import InvalidArgument
from fedgrpc.modelstore.base import ModelStore, StoredModel, validate_model_id
from fedgrpc.modelstore.directory import DirectoryModelStore
from fedgrpc.modelstore.embedded import SMALL_MODEL_BYTES, EmbeddedModelStore
from fedgrpc.modelstore.gridfs import GridFSModelStore
from fedgrpc.statestore.sqlite import SqliteBackend

__all__ = [
    "SMALL_MODEL_BYTES",
    "DirectoryModelStore",
    "EmbeddedModelStore",
    "GridFSModelStore",
    "ModelStore",
    "StoredModel",
    "create_model_store",
    "validate_model_id",
]


def create_model_store(
    *,
    data_dir: Path | None = None,
    database: Database[Any] | None = None,
    max_size: int | None = None,
    sqlite: SqliteBackend | None = None,
) -> ModelStore:
    """A directory store under ``data_dir / "models"`` or a GridFS store in ``database``.

    Exactly one of ``data_dir`` and ``database`` must be given. With ``sqlite`` (the embedded
    statestore's database) beside ``data_dir``, models up to ``SMALL_MODEL_BYTES`` are kept in
    that database and only larger ones in the directory (:class:`EmbeddedModelStore`).
    """
    if (data_dir is None) == (database is None):
        raise InvalidArgument(
            "create_model_store needs exactly one of data_dir and database, "
            f"got {'both' if data_dir is not None else 'neither'}"
        )
    if database is not None:
        return GridFSModelStore(database, max_size=max_size)
    assert data_dir is not None  # for mypy: guaranteed by the check above
    files = DirectoryModelStore(Path(data_dir) / "models", max_size=max_size)
    return files if sqlite is None else EmbeddedModelStore(sqlite, files)
