"""The statestore's shared vocabulary: records, filters, the collection protocol and helpers.

A *record* is a plain JSON-able dict with three managed fields: ``id``, ``created_at`` and
``updated_at``. Backends store records in *collections*, one per record kind; the typed
repositories in :mod:`fedgrpc.statestore.repositories` are built on top of them.

Filters are ``{field: value}`` dicts: a scalar means equality, a list or tuple means "any of"
(``$in``) and ``None`` means "the field is null or missing". Both backends implement exactly
these semantics, and the contract tests hold them to it.
"""

from __future__ import annotations

import math
import re
import threading
import uuid
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Protocol

from fedgrpc.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound

Record = dict[str, Any]
Records = list[Record]  # module-level alias: inside classes ``list`` names a method
Scalar = str | int | float | bool | None
Filters = Mapping[str, Any]
SortOrder = Literal["asc", "desc"]

META_FIELDS = ("id", "created_at", "updated_at")
SORT_ORDERS = ("asc", "desc")
# Top-level field names double as SQL json paths and Mongo keys, so they are kept boring:
# no dots (Mongo paths), no ``$`` (operators), no leading underscore (``_id`` is ours).
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # BSON's integer range


@dataclass(frozen=True)
class CollectionSpec:
    """What a backend needs to know about one collection: names, keys and unique constraints."""

    name: str
    noun: str  # singular, for error messages: "client 'abc' not found"
    filter_keys: tuple[str, ...] = ()
    sort_keys: tuple[str, ...] = ()
    unique: tuple[tuple[str, ...], ...] = ()

    @property
    def all_sort_keys(self) -> tuple[str, ...]:
        return _dedupe((*META_FIELDS, *self.sort_keys))

    @property
    def indexed(self) -> tuple[str, ...]:
        """Document fields (not the managed columns) that filters or sorts touch."""
        keys = (*self.filter_keys, *self.sort_keys)
        return tuple(key for key in _dedupe(keys) if key not in META_FIELDS)


class Collection(Protocol):
    """One backend collection of records. Every method is atomic on its own."""

    spec: CollectionSpec

    def insert(self, doc: Mapping[str, Any], *, id: str | None = None) -> Record: ...

    def get(self, record_id: str) -> Record: ...

    def find_one(self, filters: Filters) -> Record | None: ...

    def update(
        self, record_id: str, fields: Mapping[str, Any], *, expect: Filters | None = None
    ) -> Record: ...

    def update_many(self, filters: Filters, fields: Mapping[str, Any]) -> int: ...

    def upsert(self, match: Mapping[str, Scalar], fields: Mapping[str, Any]) -> Record: ...

    def delete(self, record_id: str) -> bool: ...

    def delete_many(self, filters: Filters) -> int: ...

    def list(
        self,
        filters: Filters,
        *,
        limit: int | None = None,
        skip: int = 0,
        sort_key: str = "created_at",
        sort_order: SortOrder = "desc",
    ) -> Records: ...

    def count(self, filters: Filters) -> int: ...


class Backend(Protocol):
    """A storage engine that hands out collections."""

    name: str  # "sqlite" or "mongo"

    def collection(self, spec: CollectionSpec) -> Collection: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


# --- ids and timestamps ----------------------------------------------------------------------
def new_id() -> str:
    return uuid.uuid4().hex


class _MonotonicClock:
    """UTC wall-clock timestamps that strictly increase within this process.

    Two writes in the same clock tick would otherwise share a timestamp, and then
    "updated_at moves on every write" would not hold on coarse clocks.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = datetime.min.replace(tzinfo=timezone.utc)

    def now(self) -> datetime:
        with self._lock:
            current = datetime.now(timezone.utc)
            if current <= self._last:
                current = self._last + timedelta(microseconds=1)
            self._last = current
            return current


_CLOCK = _MonotonicClock()


def now_iso() -> str:
    """Now as ISO-8601 UTC with fixed-width microseconds, so strings sort like times."""
    return _CLOCK.now().isoformat(timespec="microseconds")


def assemble_record(
    record_id: str, created_at: str, updated_at: str, doc: Mapping[str, Any]
) -> Record:
    """A record with the managed fields first, whatever order the backend returned."""
    body = {key: value for key, value in doc.items() if key not in META_FIELDS}
    return {"id": record_id, "created_at": created_at, "updated_at": updated_at, **body}


def plain_copy(doc: Mapping[str, Any]) -> Record:
    """A deep copy with tuples turned into lists, as a JSON round trip would return them."""
    return {key: _plain(value) for key, value in doc.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


# --- validation ------------------------------------------------------------------------------
def check_field_name(name: object) -> str:
    if not isinstance(name, str) or not _FIELD_NAME.match(name):
        raise InvalidArgument(
            f"field name {name!r} is invalid: use letters, digits and '_', starting with a letter"
        )
    return name


def check_record_id(record_id: object, noun: str) -> str:
    if not isinstance(record_id, str) or not record_id or len(record_id) > 256:
        raise InvalidArgument(f"{noun} id must be a non-empty string of at most 256 characters")
    return record_id


def check_document(doc: Mapping[str, Any], *, what: str) -> None:
    """Top-level names are plain identifiers, never managed fields; values are strict JSON."""
    for key, value in doc.items():
        check_field_name(key)
        if key in META_FIELDS:
            raise InvalidArgument(f"{what}: field '{key}' is managed by the statestore")
        _check_json_value(value, path=key)


def _check_json_value(value: object, *, path: str) -> None:
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidArgument(f"field '{path}': integer {value} does not fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"field '{path}': {value} is not a finite number")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json_value(item, path=f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            # "$..." keys read as operators to MongoDB; refused everywhere to stay identical.
            if not isinstance(key, str) or key.startswith("$"):
                raise InvalidArgument(
                    f"field '{path}': dict keys must be strings not starting with '$', got {key!r}"
                )
            _check_json_value(item, path=f"{path}.{key}")
    else:
        raise InvalidArgument(f"field '{path}': {type(value).__name__} is not a JSON value")


def check_filters(filters: Filters, allowed: Iterable[str], *, noun: str) -> None:
    """Only declared keys (which keeps user input out of SQL) and scalar or list values."""
    allowed_keys = tuple(allowed)
    for key, wanted in filters.items():
        if key not in allowed_keys:
            raise InvalidArgument(
                f"unknown filter '{key}' for {noun} records; allowed: {', '.join(allowed_keys)}"
            )
        check_filter_value(key, wanted)


def check_filter_value(key: str, wanted: object) -> None:
    """A scalar, None, or a list/tuple of those; dicts (Mongo operators!) are refused."""
    values = wanted if isinstance(wanted, (list, tuple)) else [wanted]
    for value in values:
        if value is not None and not isinstance(value, (str, int, float)):
            raise InvalidArgument(
                f"filter '{key}': {type(value).__name__} values cannot be matched; "
                "use a string, number, bool, None or a list of those"
            )


def check_page(
    *, limit: int | None, skip: int, sort_key: str, sort_order: str, spec: CollectionSpec
) -> None:
    if limit is not None and (not _is_plain_int(limit) or limit < 0):
        raise InvalidArgument(f"limit must be an integer >= 0 (0 or None: no limit), got {limit!r}")
    if not _is_plain_int(skip) or skip < 0:
        raise InvalidArgument(f"skip must be an integer >= 0, got {skip!r}")
    if sort_key not in spec.all_sort_keys:
        allowed = ", ".join(spec.all_sort_keys)
        raise InvalidArgument(
            f"unknown sort key '{sort_key}' for {spec.noun} records; allowed: {allowed}"
        )
    if sort_order not in SORT_ORDERS:
        raise InvalidArgument(f"sort_order must be 'asc' or 'desc', got {sort_order!r}")


def _is_plain_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dedupe(keys: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(keys))


def duplicate_message(
    spec: CollectionSpec, fields: tuple[str, ...], values: Mapping[str, Any]
) -> str:
    """ "client with name='a' already exists", or "session 'abc' already exists" for ids."""
    if fields == ("id",):
        return f"{spec.noun} '{values.get('id')}' already exists"
    if not fields or any(field not in values for field in fields):
        named = ", ".join(fields) or "unique fields"
        return f"another {spec.noun} already has the same {named}"
    shown = ", ".join(f"{field}={values[field]!r}" for field in fields)
    return f"{spec.noun} with {shown} already exists"


# --- errors and shared steps -----------------------------------------------------------------
def closed_error() -> FailedPrecondition:
    return FailedPrecondition("the statestore is closed; open a new one with open_statestore()")


def not_found_error(spec: CollectionSpec, record_id: str) -> NotFound:
    return NotFound(f"{spec.noun} '{record_id}' not found")


def not_updated_error(
    spec: CollectionSpec, record_id: str, expect: Filters | None, *, exists: bool
) -> NotFound | Aborted:
    """Why a conditional update matched nothing: the record is gone, or it has changed."""
    if not exists:
        return not_found_error(spec, record_id)
    return Aborted(
        f"{spec.noun} '{record_id}' was not updated: it no longer matches {dict(expect or {})!r}"
        " (changed concurrently); re-read it and retry"
    )


def split_upsert(
    spec: CollectionSpec, match: Mapping[str, Scalar], fields: Mapping[str, Any]
) -> tuple[str | None, Record]:
    """Validate an upsert; return (explicit id or None, the document to insert if none matches)."""
    check_document(fields, what=f"upsert of {spec.noun}")
    check_document({key: value for key, value in match.items() if key != "id"}, what="match")
    overlap = sorted(set(match) & set(fields))
    if overlap:
        raise InvalidArgument(f"upsert of {spec.noun}: {overlap} appear in both match and fields")
    explicit_id = match.get("id")
    if explicit_id is not None:
        check_record_id(explicit_id, spec.noun)
    body = {key: value for key, value in match.items() if key != "id"}
    return (None if explicit_id is None else str(explicit_id)), {**body, **fields}
