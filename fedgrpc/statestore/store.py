"""The StateStore (every repository on one backend) and the factories that open one."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

import pymongo
from pymongo.database import Database
from pymongo.errors import ConfigurationError

from fedgrpc.errors import InvalidArgument

from .analyses import (
    AnalysisLogRepository,
    AnalysisRepository,
    MessageRepository,
    ObjectRepository,
)
from .artifacts import ModelRepository, PackageRepository
from .base import Backend
from .events import MetricRepository, StatusRepository, ValidationRepository
from .mongo import MongoBackend
from .repositories import (
    ClientRepository,
    CombinerRepository,
    KeyValueStore,
    RevocationRepository,
    RoundRepository,
    SessionRepository,
)
from .sqlite import SqliteBackend

MONGO_SCHEMES = ("mongodb://", "mongodb+srv://")
SQLITE_FILE_NAME = "statestore.sqlite3"
DEFAULT_SERVER_SELECTION_TIMEOUT_MS = 10_000


class StateStore:
    """All repositories over one backend. Use as a context manager, or call ``close()``."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.kv = KeyValueStore(backend.collection(KeyValueStore.spec))
        self.clients = ClientRepository(backend.collection(ClientRepository.spec))
        self.combiners = CombinerRepository(backend.collection(CombinerRepository.spec))
        self.sessions = SessionRepository(backend.collection(SessionRepository.spec))
        self.rounds = RoundRepository(backend.collection(RoundRepository.spec))
        self.models = ModelRepository(backend.collection(ModelRepository.spec), self.kv)
        self.packages = PackageRepository(backend.collection(PackageRepository.spec), self.kv)
        self.statuses = StatusRepository(backend.collection(StatusRepository.spec))
        self.validations = ValidationRepository(backend.collection(ValidationRepository.spec))
        self.metrics = MetricRepository(backend.collection(MetricRepository.spec))
        self.revocations = RevocationRepository(backend.collection(RevocationRepository.spec))
        self.analyses = AnalysisRepository(backend.collection(AnalysisRepository.spec))
        self.analysis_logs = AnalysisLogRepository(backend.collection(AnalysisLogRepository.spec))
        self.messages = MessageRepository(backend.collection(MessageRepository.spec))
        self.objects = ObjectRepository(backend.collection(ObjectRepository.spec))

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"mongo"``."""
        return self._backend.name

    @property
    def sqlite_backend(self) -> SqliteBackend | None:
        """The SQLite database (for the embedded model store's small models); None on Mongo."""
        return self._backend if isinstance(self._backend, SqliteBackend) else None

    def transaction(self) -> AbstractContextManager[None]:
        """Group the writes this thread makes in the block. On SQLite they commit together
        (one transaction, and one commit instead of one per write) or not at all; on MongoDB
        each is applied as it is made, in order, so write them in a crash-safe order."""
        return self._backend.transaction()

    def ping(self) -> None:
        """Return if the backend answers; raise ``Unavailable`` if it cannot be reached."""
        self._backend.ping()

    def close(self) -> None:
        """Release connections; later calls raise ``FailedPrecondition``. Idempotent."""
        self._backend.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_statestore(
    *,
    mongo_uri: str | None = None,
    mongo_database: str = "fedgrpc",
    data_dir: Path | None = None,
    server_selection_timeout_ms: int = DEFAULT_SERVER_SELECTION_TIMEOUT_MS,
) -> StateStore:
    """A Mongo-backed store for a ``mongodb://``/``mongodb+srv://`` URI, else SQLite in data_dir."""
    if mongo_uri:
        if not mongo_uri.startswith(MONGO_SCHEMES):
            raise InvalidArgument(
                "mongo_uri must start with mongodb:// or mongodb+srv:// "
                f"(got {mongo_uri.split('://', 1)[0]!r}); leave it unset to use SQLite"
            )
        return _open_mongo_uri(mongo_uri, mongo_database, server_selection_timeout_ms)
    if data_dir is None:
        raise InvalidArgument(
            "no statestore configured: pass mongo_uri (MongoDB) or data_dir (embedded SQLite)"
        )
    return open_sqlite_statestore(Path(data_dir) / SQLITE_FILE_NAME)


def open_sqlite_statestore(path: Path) -> StateStore:
    """An SQLite-backed store in the file ``path``; parent directories are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return StateStore(SqliteBackend(path))


def open_mongo_statestore(database: Database[Any]) -> StateStore:
    """A store on a database whose client the caller owns (``close()`` leaves it open)."""
    return StateStore(MongoBackend(database))


def _open_mongo_uri(uri: str, database: str, timeout_ms: int) -> StateStore:
    try:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=timeout_ms, tz_aware=True
        )
    except ConfigurationError as exc:  # also InvalidURI; the URI itself is not echoed back
        raise InvalidArgument(f"mongo_uri is not usable: {exc}") from exc
    try:
        return StateStore(MongoBackend(client[database], owned_client=client))
    except BaseException:
        client.close()  # the indexes could not be created; do not leak the client's threads
        raise
