"""Streamed, verified, all-or-nothing storage of model blobs: on a directory or in GridFS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pymongo.database import Database

from fedgrpc.errors import InvalidArgument
from fedgrpc.modelstore.base import ModelStore, StoredModel, validate_model_id
from fedgrpc.modelstore.directory import DirectoryModelStore
from fedgrpc.modelstore.gridfs import GridFSModelStore

__all__ = [
    "DirectoryModelStore",
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
) -> ModelStore:
    """A directory store under ``data_dir / "models"`` or a GridFS store in ``database``.

    Exactly one of ``data_dir`` and ``database`` must be given.
    """
    if (data_dir is None) == (database is None):
        raise InvalidArgument(
            "create_model_store needs exactly one of data_dir and database, "
            f"got {'both' if data_dir is not None else 'neither'}"
        )
    if database is not None:
        return GridFSModelStore(database, max_size=max_size)
    assert data_dir is not None  # for mypy: guaranteed by the check above
    return DirectoryModelStore(Path(data_dir) / "models", max_size=max_size)
