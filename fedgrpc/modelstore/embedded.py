"""The embedded default model store: small models inside the statestore's SQLite file, large
ones as files beside it.

Why two tiers: as a file, every committed model costs a create, a write, a link and two
flushes (the file and its directory), about 1 ms of each tiny round on a 2-vCPU host (see
``bench/RESULTS.md``). As a row of the statestore's SQLite file (write-ahead log,
``synchronous=NORMAL``) a small model is a few more frames in the same log as the records that
point to it. SQLite replays its log only up to the first incomplete frame after a crash, so a
record can never survive without a model written before it, with no flush at all; a crash
loses the last commits of both together. SQLite also reads and writes blobs of up to ~100 kB
faster than one file each (https://sqlite.org/fasterthanfs.html). Large models stay files:
written once, streamed, linked, flushed.

The table is the index of every model: a small model's row holds its bytes, a large model's row
holds none and its bytes are the file. The table's primary key decides a race of two puts of
one id, whichever tier each went to. A file with no row (a data directory written before this
store) is still found.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import Iterable, Iterator

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
from fedgrpc.modelstore.directory import DirectoryModelStore
from fedgrpc.statestore.sqlite import SqliteBackend

# Up to this size a model is a row: the controller's default inline limit, so every model that
# travels inline on the control streams is stored without a file.
SMALL_MODEL_BYTES = 1024 * 1024
_TABLE = "model_blobs"
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {_TABLE} "
    "(id TEXT PRIMARY KEY, size INTEGER NOT NULL, data BLOB) WITHOUT ROWID"
)


class EmbeddedModelStore(ModelStore):
    """Models up to ``small_limit`` bytes as rows of ``database``, larger ones in ``files``.

    ``database`` is the statestore's backend (the store neither owns nor closes it).
    """

    def __init__(
        self,
        database: SqliteBackend,
        files: DirectoryModelStore,
        *,
        small_limit: int = SMALL_MODEL_BYTES,
    ) -> None:
        self._db = database
        self.files = files
        self.max_size = files.max_size
        self.small_limit = small_limit
        with self._db.writing() as conn:
            conn.execute(_SCHEMA)

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
        """Small payloads become a row, larger ones a file. ``durable`` matters for files only:
        a row is as durable as the records written after it (see the module's docstring)."""
        validate_model_id(model_id)
        verifier = self._verifier(
            expected_size=expected_size,
            expected_digest=expected_digest,
            verified_digest=verified_digest,
            algorithm=algorithm,
        )
        small = expected_size is not None and expected_size <= self.small_limit
        # Fail before receiving a payload of unknown or large size; the key decides races.
        if not small and self.exists(model_id):
            raise AlreadyExists(f"model {model_id!r} already exists")
        if small or expected_size is None:
            head, rest = _take_up_to(chunks, self.small_limit)
            if rest is None:
                return self._put_row(model_id, head, verifier)
            chunks = itertools.chain(head, rest)
        stored = self.files.put(
            model_id,
            chunks,
            expected_size=expected_size,
            expected_digest=expected_digest,
            durable=durable,
            verified_digest=verified_digest,
            algorithm=algorithm,
        )
        self._register_file(model_id, stored.size)
        return stored

    def copy(
        self, source_id: str, model_id: str, *, verified_digest: str | None = None
    ) -> StoredModel:
        """A row copied within the database, or a file hard-linked: no byte leaves the store."""
        validate_model_id(model_id)
        data = self._row_data(source_id)
        if data is None:
            if self.exists(model_id):
                raise AlreadyExists(f"model {model_id!r} already exists")
            stored = self.files.copy(source_id, model_id, verified_digest=verified_digest)
            self._register_file(model_id, stored.size)
            return stored
        self._insert_row(model_id, data)
        digest = verified_digest or BLAKE3.hex(data)
        return StoredModel(model_id=model_id, size=len(data), digest=digest)

    def get(self, model_id: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        check_chunk_size(chunk_size)
        data = self._row_data(model_id)
        if data is None:
            return self.files.get(model_id, chunk_size=chunk_size)
        return (data[start : start + chunk_size] for start in range(0, len(data), chunk_size))

    def get_bytes(self, model_id: str) -> bytes:
        data = self._row_data(model_id)
        return self.files.get_bytes(model_id) if data is None else data

    def delete(self, model_id: str) -> bool:
        validate_model_id(model_id)
        with self._db.writing() as conn:
            deleted_row = conn.execute(f"DELETE FROM {_TABLE} WHERE id = ?", (model_id,)).rowcount
        deleted_file = self.files.delete(model_id)
        return bool(deleted_row) or deleted_file

    def exists(self, model_id: str) -> bool:
        return self._row_size(model_id) is not None or self.files.exists(model_id)

    def size(self, model_id: str) -> int:
        size = self._row_size(model_id)
        return self.files.size(model_id) if size is None else size

    def model_ids(self) -> list[str]:
        """Every stored model's id, sorted: the rows' and those of files without a row."""
        with self._db.reading() as conn:
            ids = {row[0] for row in conn.execute(f"SELECT id FROM {_TABLE}")}
        ids.update(path.name for path in self.files.root.iterdir() if path.name[0] != ".")
        return sorted(ids)

    def close(self) -> None:
        """Nothing to release: the database belongs to the statestore, files are per call."""

    def writes_into_statestore(self, size: int) -> bool:
        """Small models are rows, written through the statestore's own connection."""
        return size <= self.small_limit

    def __repr__(self) -> str:
        return (
            f"EmbeddedModelStore({str(self._db.path)!r}, {self.files!r}, "
            f"small_limit={self.small_limit})"
        )

    def _put_row(
        self, model_id: str, chunks: list[Buffer], verifier: StreamVerifier
    ) -> StoredModel:
        for chunk in chunks:
            verifier.update(chunk)
        verifier.finish()
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._insert_row(model_id, data)
        return StoredModel(model_id=model_id, size=verifier.received, digest=verifier.digest)

    def _insert_row(self, model_id: str, data: Buffer) -> None:
        with self._unique(model_id), self._db.writing() as conn:
            # Under the write lock: a large put links its file before it takes the lock to
            # register it, so either this sees the file or that registration sees this row.
            if self.files.exists(model_id):
                raise AlreadyExists(f"model {model_id!r} already exists")
            size = memoryview(data).nbytes
            conn.execute(
                f"INSERT INTO {_TABLE} (id, size, data) VALUES (?, ?, ?)", (model_id, size, data)
            )

    def _register_file(self, model_id: str, size: int) -> None:
        """The row of a file just linked; the file is removed again if the id was taken."""
        try:
            with self._unique(model_id), self._db.writing() as conn:
                sql = f"INSERT INTO {_TABLE} (id, size, data) VALUES (?, ?, NULL)"
                conn.execute(sql, (model_id, size))
        except BaseException:
            self.files.delete(model_id)
            raise

    def _row_size(self, model_id: str) -> int | None:
        """The size in the model's row (small or large); None if it has no row."""
        validate_model_id(model_id)
        with self._db.reading() as conn:
            row = conn.execute(f"SELECT size FROM {_TABLE} WHERE id = ?", (model_id,)).fetchone()
        return None if row is None else int(row[0])

    def _row_data(self, model_id: str) -> bytes | None:
        """A small model's bytes; None for a file (registered or not). NotFound if neither."""
        validate_model_id(model_id)
        with self._db.reading() as conn:
            sql = f"SELECT data FROM {_TABLE} WHERE id = ?"
            row = conn.execute(sql, (model_id,)).fetchone()
        if row is not None and row[0] is not None:
            return bytes(row[0])
        if row is None and not self.files.exists(model_id):
            raise NotFound(f"model {model_id!r} not found")
        return None

    @contextlib.contextmanager
    def _unique(self, model_id: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"model {model_id!r} already exists") from None


def _take_up_to(
    chunks: Iterable[Buffer], limit: int
) -> tuple[list[Buffer], Iterator[Buffer] | None]:
    """The chunks up to ``limit`` bytes in all, and None if that was all of them; else the
    chunks read so far (one past the limit) and the iterator of the rest."""
    iterator = iter(chunks)
    head: list[Buffer] = []
    total = 0
    for chunk in iterator:
        head.append(bytes(chunk) if isinstance(chunk, memoryview | bytearray) else chunk)
        total += len(head[-1])
        if total > limit:
            return head, iterator
    return head, None
