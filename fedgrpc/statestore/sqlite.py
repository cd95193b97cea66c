"""SQLite backend: the embedded default, stdlib ``sqlite3`` only, no server to run.

One table per collection: ``(id TEXT PRIMARY KEY, created_at, updated_at, doc)`` where ``doc``
holds the rest of the record as JSON. Filter and sort keys get expression indexes on
``json_extract(doc, '$.field')``; unique fields get unique expression indexes, so duplicates are
refused by SQLite itself. Field names reach SQL only after the repositories' allow-lists and the
identifier check in :func:`~fedgrpc.statestore.base.check_field_name`; values are always bound.

Concurrency: every thread gets its own connection (WAL lets readers run beside the writer), and
every write runs inside ``BEGIN IMMEDIATE`` so read-modify-write steps cannot interleave.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fedgrpc.errors import AlreadyExists, Unavailable

from .base import (
    CollectionSpec,
    Filters,
    Record,
    Records,
    Scalar,
    SortOrder,
    assemble_record,
    check_document,
    check_record_id,
    closed_error,
    duplicate_message,
    new_id,
    not_found_error,
    not_updated_error,
    now_iso,
    split_upsert,
)
from .sqlite_sql import (
    Conditions,
    dumps,
    field_sql,
    quoted,
    schema,
    set_clause,
    unique_index_name,
    where_clause,
)

# Errors that mean "the database cannot be used right now" rather than "the code is wrong".
_UNAVAILABLE_ERRORS = (
    *("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_FULL"),
    *("SQLITE_READONLY", "SQLITE_PROTOCOL", "SQLITE_NOTADB", "SQLITE_CORRUPT"),
)
_ROW = tuple[str, str, str, str]


class SqliteBackend:
    """Owns the database file and the per-thread connections to it."""

    name = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_ms: int = 30_000) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        # Weak, so a finished thread's connection is closed with its thread-local holder,
        # while close() can still reach the connections of every live thread.
        self._holders: weakref.WeakSet[_ConnectionHolder] = weakref.WeakSet()
        self._closed = False
        with self.reading() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: recorded in the file

    def collection(self, spec: CollectionSpec) -> SqliteCollection:
        with self.writing() as conn:
            for statement in schema(spec):
                conn.execute(statement)
        return SqliteCollection(self, spec)

    def ping(self) -> None:
        with self.reading() as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            holders = list(self._holders)
        for holder in holders:
            holder.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._translate_errors():
            yield self._connection()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """This thread's writes inside the block commit together, or none of them does."""
        with self.writing():
            yield

    @contextlib.contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the write lock from its first statement; inside
        :meth:`transaction`, a part of that one."""
        with self._translate_errors():
            conn = self._connection()
            if conn.in_transaction:  # the enclosing transaction commits or rolls back
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.rollback()
                raise

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise closed_error()
        holder: _ConnectionHolder | None = getattr(self._local, "holder", None)
        if holder is None:
            with self._lock:
                if self._closed:  # close() may have run while this thread waited
                    raise closed_error()
                holder = _ConnectionHolder(self._connect())
                self._holders.add(holder)
            self._local.holder = holder
        return holder.conn

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; writing() issues BEGIN itself.
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; loses at most the last txn
        return conn

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError:
            raise  # a unique constraint: the collection turns it into AlreadyExists
        except sqlite3.ProgrammingError as exc:
            if self._closed:  # another thread closed the store under us
                raise closed_error() from exc
            raise
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorname", None)  # Python 3.11+
            if code is not None and not code.startswith(_UNAVAILABLE_ERRORS):
                raise  # e.g. SQLITE_ERROR: a bug in this module, not the database's state
            raise Unavailable(f"statestore database '{self.path}' is unusable: {exc}") from exc


class _ConnectionHolder:
    """One thread's connection; closed when the holder is dropped with its thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._finalizer = weakref.finalize(self, _close_quietly, conn)

    def close(self) -> None:
        self._finalizer()  # runs at most once


def _close_quietly(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()


class SqliteCollection:
    """One table of records; see :class:`fedgrpc.statestore.base.Collection`."""

    def __init__(self, backend: SqliteBackend, spec: CollectionSpec) -> None:
        self.spec = spec
        self._db = backend
        self._table = quoted(spec.name)
        self._select = f"SELECT id, created_at, updated_at, doc FROM {self._table}"

    def insert(self, doc: Mapping[str, Any], *, id: str | None = None) -> Record:
        check_document(doc, what=f"new {self.spec.noun}")
        record_id = new_id() if id is None else check_record_id(id, self.spec.noun)
        with self._unique_errors({"id": record_id, **doc}), self._db.writing() as conn:
            return self._insert(conn, record_id, doc)

    def get(self, record_id: str) -> Record:
        found = self.find_one({"id": record_id})
        if found is None:
            raise not_found_error(self.spec, record_id)
        return found

    def find_one(self, filters: Filters) -> Record | None:
        with self._db.reading() as conn:
            return self._find(conn, filters.items())

    def update(
        self, record_id: str, fields: Mapping[str, Any], *, expect: Filters | None = None
    ) -> Record:
        check_document(fields, what=f"update of {self.spec.noun}")
        conditions = [("id", record_id), *(expect or {}).items()]
        with self._unique_errors(fields), self._db.writing() as conn:
            if self._update(conn, conditions, fields) == 0:
                current = self._find(conn, [("id", record_id)])
                raise not_updated_error(self.spec, record_id, expect, exists=current is not None)
            return self._get(conn, record_id)

    def update_many(self, filters: Filters, fields: Mapping[str, Any]) -> int:
        check_document(fields, what=f"update of {self.spec.noun} records")
        with self._unique_errors(fields), self._db.writing() as conn:
            return self._update(conn, filters.items(), fields)

    def upsert(self, match: Mapping[str, Scalar], fields: Mapping[str, Any]) -> Record:
        explicit_id, new_doc = split_upsert(self.spec, match, fields)
        with self._unique_errors({**match, **fields}), self._db.writing() as conn:
            existing = self._find(conn, match.items())
            if existing is None:
                return self._insert(conn, explicit_id or new_id(), new_doc)
            self._update(conn, [("id", existing["id"])], fields)
            return self._get(conn, existing["id"])

    def delete(self, record_id: str) -> bool:
        return self.delete_many({"id": record_id}) > 0

    def delete_many(self, filters: Filters) -> int:
        where, params = where_clause(filters.items())
        with self._db.writing() as conn:
            return conn.execute(f"DELETE FROM {self._table} WHERE {where}", params).rowcount

    def list(
        self,
        filters: Filters,
        *,
        limit: int | None = None,
        skip: int = 0,
        sort_key: str = "created_at",
        sort_order: SortOrder = "desc",
    ) -> Records:
        where, params = where_clause(filters.items())
        direction = "DESC" if sort_order == "desc" else "ASC"
        # ``id`` breaks ties in the same direction, so pages never overlap or skip records.
        order = f"{field_sql(sort_key)} {direction}, id {direction}"
        sql = f"{self._select} WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?"
        with self._db.reading() as conn:
            rows = conn.execute(sql, [*params, limit or -1, skip]).fetchall()
        return [_to_record(row) for row in rows]

    def count(self, filters: Filters) -> int:
        where, params = where_clause(filters.items())
        with self._db.reading() as conn:
            row = conn.execute(f"SELECT count(*) FROM {self._table} WHERE {where}", params)
            return int(row.fetchone()[0])

    # --- steps that run inside a caller's transaction --------------------------------------
    def _insert(self, conn: sqlite3.Connection, record_id: str, doc: Mapping[str, Any]) -> Record:
        now = now_iso()
        row: _ROW = (record_id, now, now, dumps(doc))
        conn.execute(
            f"INSERT INTO {self._table} (id, created_at, updated_at, doc) VALUES (?, ?, ?, ?)", row
        )
        return _to_record(row)

    def _update(
        self, conn: sqlite3.Connection, conditions: Conditions, fields: Mapping[str, Any]
    ) -> int:
        assignments, params = set_clause(fields, now_iso())
        where, where_params = where_clause(conditions)
        sql = f"UPDATE {self._table} SET {assignments} WHERE {where}"
        return conn.execute(sql, [*params, *where_params]).rowcount

    def _find(self, conn: sqlite3.Connection, conditions: Conditions) -> Record | None:
        where, params = where_clause(conditions)
        row = conn.execute(f"{self._select} WHERE {where} LIMIT 1", params).fetchone()
        return None if row is None else _to_record(row)

    def _get(self, conn: sqlite3.Connection, record_id: str) -> Record:
        found = self._find(conn, [("id", record_id)])
        if found is None:
            raise not_found_error(self.spec, record_id)
        return found

    @contextlib.contextmanager
    def _unique_errors(self, values: Mapping[str, Any]) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError as exc:
            fields = self._violated_constraint(str(exc))
            raise AlreadyExists(duplicate_message(self.spec, fields, values)) from exc

    def _violated_constraint(self, message: str) -> tuple[str, ...]:
        # SQLite names the constraint: "UNIQUE constraint failed: index 'ux_clients_name'".
        if f"{self.spec.name}.id" in message:
            return ("id",)
        for fields in self.spec.unique:
            if f"'{unique_index_name(self.spec, fields)}'" in message:
                return fields
        return ()


def _to_record(row: _ROW) -> Record:
    record_id, created_at, updated_at, doc = row
    return assemble_record(record_id, created_at, updated_at, json.loads(doc))
