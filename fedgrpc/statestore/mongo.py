"""MongoDB backend (pymongo): for deployments that already run MongoDB, as FEDn does.

One Mongo collection per record kind, named like the repository. ``_id`` holds our id and is
translated to ``id`` at this boundary, so no ``_id`` ever leaves the module. Indexes are created
at start-up (``create_indexes`` is idempotent). Single-document operations are atomic in
MongoDB, so compare-and-set and upsert map onto one ``find_one_and_update`` each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import pymongo
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.collection import Collection as PyMongoCollection
from pymongo.database import Database
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    InvalidOperation,
    OperationFailure,
)

from fedgrpc.errors import Aborted, AlreadyExists, Unavailable

from .base import (
    CollectionSpec,
    Filters,
    Record,
    Records,
    Scalar,
    SortOrder,
    assemble_record,
    check_document,
    check_field_name,
    check_filter_value,
    check_record_id,
    closed_error,
    duplicate_message,
    new_id,
    not_found_error,
    not_updated_error,
    now_iso,
    plain_copy,
    split_upsert,
)

MongoDocument = dict[str, Any]
_UPSERT_ATTEMPTS = 3


class MongoBackend:
    """Wraps one database; closes the client only if it opened it (see ``open_statestore``)."""

    name = "mongo"

    def __init__(
        self,
        database: Database[MongoDocument],
        *,
        owned_client: pymongo.MongoClient[MongoDocument] | None = None,
    ) -> None:
        self.database = database
        self._owned_client = owned_client
        self._closed = False

    def collection(self, spec: CollectionSpec) -> MongoCollection:
        collection = MongoCollection(self, spec)
        collection.ensure_indexes()
        return collection

    def ping(self) -> None:
        with self.guard():
            self.database.command("ping")

    def close(self) -> None:
        self._closed = True
        if self._owned_client is not None:
            self._owned_client.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Writes inside the block are applied one by one, in order: a multi-document
        transaction needs a replica set, which the statestore does not require. Callers order
        their writes so that any prefix of them is a consistent state."""
        yield

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Refuse work once closed; turn lost connections into ``Unavailable``."""
        if self._closed:
            raise closed_error()
        try:
            yield
        except ConnectionFailure as exc:  # also AutoReconnect and ServerSelectionTimeoutError
            raise Unavailable(f"MongoDB statestore is unreachable: {exc}") from exc
        except OperationFailure as exc:
            # Queries are built from validated input, so a refusal is about the server
            # (auth, timeouts, limits), not the caller's request. Duplicates never get here:
            # _errors() turns them into AlreadyExists first.
            raise Unavailable(f"MongoDB statestore refused the operation: {exc}") from exc
        except InvalidOperation as exc:  # pymongo's "cannot use MongoClient after close"
            if self._closed:
                raise closed_error() from exc
            raise


class MongoCollection:
    """One Mongo collection of records; see :class:`fedgrpc.statestore.base.Collection`."""

    def __init__(self, backend: MongoBackend, spec: CollectionSpec) -> None:
        self.spec = spec
        self._backend = backend
        self._col: PyMongoCollection[MongoDocument] = backend.database[spec.name]

    def ensure_indexes(self) -> None:
        # (field, _id) serves both equality filters and sorts with the id tie-breaker.
        sortable = ("created_at", "updated_at", *self.spec.indexed)
        models = [
            IndexModel([(key, ASCENDING), ("_id", ASCENDING)], name=f"ix_{key}") for key in sortable
        ]
        models += [
            IndexModel([(key, ASCENDING) for key in fields], name=_unique_name(fields), unique=True)
            for fields in self.spec.unique
        ]
        with self._backend.guard():
            self._col.create_indexes(models)

    def insert(self, doc: Mapping[str, Any], *, id: str | None = None) -> Record:
        check_document(doc, what=f"new {self.spec.noun}")
        record_id = new_id() if id is None else check_record_id(id, self.spec.noun)
        now = now_iso()
        raw = {"_id": record_id, "created_at": now, "updated_at": now, **plain_copy(doc)}
        with self._errors({"id": record_id, **doc}):
            self._col.insert_one(raw)
        return _to_record(raw)

    def get(self, record_id: str) -> Record:
        found = self.find_one({"id": record_id})
        if found is None:
            raise not_found_error(self.spec, record_id)
        return found

    def find_one(self, filters: Filters) -> Record | None:
        with self._backend.guard():
            raw = self._col.find_one(mongo_filter(filters))
        return None if raw is None else _to_record(raw)

    def update(
        self, record_id: str, fields: Mapping[str, Any], *, expect: Filters | None = None
    ) -> Record:
        check_document(fields, what=f"update of {self.spec.noun}")
        query: MongoDocument = {"_id": record_id}
        if expect:
            query = {"$and": [query, mongo_filter(expect)]}
        with self._errors(fields):
            raw = self._col.find_one_and_update(
                query, _set(fields), return_document=ReturnDocument.AFTER
            )
            if raw is None:
                exists = self._col.count_documents({"_id": record_id}, limit=1) > 0
                raise not_updated_error(self.spec, record_id, expect, exists=exists)
        return _to_record(raw)

    def update_many(self, filters: Filters, fields: Mapping[str, Any]) -> int:
        check_document(fields, what=f"update of {self.spec.noun} records")
        with self._errors(fields):
            return self._col.update_many(mongo_filter(filters), _set(fields)).matched_count

    def upsert(self, match: Mapping[str, Scalar], fields: Mapping[str, Any]) -> Record:
        explicit_id, _ = split_upsert(self.spec, match, fields)
        update = _set(fields)
        # Fields of an equality query are copied into an upserted document by MongoDB itself.
        update["$setOnInsert"] = {"created_at": update["$set"]["updated_at"]}
        if explicit_id is None:
            update["$setOnInsert"]["_id"] = new_id()
        with self._errors({**match, **fields}):
            return self._upsert(mongo_filter(match), update)

    def _upsert(self, query: MongoDocument, update: MongoDocument) -> Record:
        """Retry the races a single upsert can lose; a repeat is harmless ($set is idempotent)."""
        for attempt in range(1, _UPSERT_ATTEMPTS + 1):
            try:
                raw = self._col.find_one_and_update(
                    query, update, upsert=True, return_document=ReturnDocument.AFTER
                )
            except DuplicateKeyError:
                if attempt == _UPSERT_ATTEMPTS:
                    raise  # not a race but a real conflict (another unique field)
                continue  # another upsert inserted the same key first; now this one matches
            if raw is not None:
                return _to_record(raw)
            # SecantusDB answers some raced upserts with no document although the write
            # landed; the repeat finds the record and returns it.
        raise Aborted(f"upsert of {self.spec.noun} kept racing with other writers; retry it")

    def delete(self, record_id: str) -> bool:
        with self._backend.guard():
            return self._col.delete_one({"_id": record_id}).deleted_count > 0

    def delete_many(self, filters: Filters) -> int:
        with self._backend.guard():
            return self._col.delete_many(mongo_filter(filters)).deleted_count

    def list(
        self,
        filters: Filters,
        *,
        limit: int | None = None,
        skip: int = 0,
        sort_key: str = "created_at",
        sort_order: SortOrder = "desc",
    ) -> Records:
        direction = DESCENDING if sort_order == "desc" else ASCENDING
        key = _mongo_key(sort_key)
        # ``_id`` breaks ties in the same direction, so pages never overlap or skip records.
        order = [(key, direction)] if key == "_id" else [(key, direction), ("_id", direction)]
        with self._backend.guard():
            cursor = self._col.find(mongo_filter(filters), sort=order, skip=skip, limit=limit or 0)
            return [_to_record(raw) for raw in cursor]

    def count(self, filters: Filters) -> int:
        with self._backend.guard():
            return self._col.count_documents(mongo_filter(filters))

    @contextlib.contextmanager
    def _errors(self, values: Mapping[str, Any]) -> Iterator[None]:
        with self._backend.guard():
            try:
                yield
            except DuplicateKeyError as exc:
                fields, key_values = _violated_constraint(exc)
                message = duplicate_message(self.spec, fields, {**values, **key_values})
                raise AlreadyExists(message) from exc


def mongo_filter(filters: Filters) -> MongoDocument:
    """Our filter semantics in Mongo terms; ``None`` already means "null or missing" there."""
    query: MongoDocument = {}
    for field, wanted in filters.items():
        check_filter_value(field, wanted)
        key = _mongo_key(field)
        query[key] = {"$in": list(wanted)} if isinstance(wanted, (list, tuple)) else wanted
    return query


def _mongo_key(field: str) -> str:
    return "_id" if field == "id" else check_field_name(field)


def _set(fields: Mapping[str, Any]) -> MongoDocument:
    return {"$set": {**plain_copy(fields), "updated_at": now_iso()}}


def _unique_name(fields: tuple[str, ...]) -> str:
    return f"ux_{'_'.join(fields)}"


def _violated_constraint(exc: DuplicateKeyError) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The fields and values MongoDB reports (``keyPattern``/``keyValue``), in our names."""
    details = exc.details or {}
    pattern = details.get("keyPattern") or {}
    key_values = details.get("keyValue") or {}
    rename = {"_id": "id"}
    fields = tuple(rename.get(key, key) for key in pattern)
    return fields, {rename.get(key, key): value for key, value in key_values.items()}


def _to_record(raw: Mapping[str, Any]) -> Record:
    doc = {key: value for key, value in raw.items() if key != "_id"}
    return assemble_record(str(raw["_id"]), doc.pop("created_at"), doc.pop("updated_at"), doc)
