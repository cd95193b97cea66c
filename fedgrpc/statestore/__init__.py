"""The controller's statestore: clients, combiners, sessions, rounds, models and events.

Two interchangeable backends: embedded SQLite (the default, no server needed) and MongoDB.
Open one with :func:`open_statestore`; every repository's ``list`` returns FEDn's shape
``{"count": total, "result": [records]}``.
"""

from .artifacts import ActiveRecordRepository, ModelRepository, PackageRepository
from .base import Backend, Collection, CollectionSpec, Filters, Record, SortOrder, now_iso
from .events import MetricRepository, StatusRepository, ValidationRepository
from .repositories import (
    ClientRepository,
    CombinerRepository,
    KeyValueStore,
    ListResult,
    NamedRepository,
    Repository,
    RevocationRepository,
    RoundRepository,
    SessionRepository,
)
from .store import (
    StateStore,
    open_mongo_statestore,
    open_sqlite_statestore,
    open_statestore,
)

__all__ = [
    "ActiveRecordRepository",
    "Backend",
    "ClientRepository",
    "Collection",
    "CollectionSpec",
    "CombinerRepository",
    "Filters",
    "KeyValueStore",
    "ListResult",
    "MetricRepository",
    "ModelRepository",
    "NamedRepository",
    "PackageRepository",
    "Record",
    "Repository",
    "RevocationRepository",
    "RoundRepository",
    "SessionRepository",
    "SortOrder",
    "StateStore",
    "StatusRepository",
    "ValidationRepository",
    "now_iso",
    "open_mongo_statestore",
    "open_sqlite_statestore",
    "open_statestore",
]
