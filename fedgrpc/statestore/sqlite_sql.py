"""SQL text for the SQLite backend, built only from declared names; values are always bound."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .base import META_FIELDS, CollectionSpec, check_field_name, check_filter_value

Conditions = Iterable[tuple[str, Any]]
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def schema(spec: CollectionSpec) -> Iterator[str]:
    table = quoted(spec.name)
    yield (
        f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, "
        "created_at TEXT NOT NULL, updated_at TEXT NOT NULL, doc TEXT NOT NULL)"
    )
    for field in ("created_at", "updated_at", *spec.indexed):
        index = quoted(f"ix_{spec.name}_{field}")
        yield f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({field_sql(field)}, id)"
    for fields in spec.unique:
        index = quoted(unique_index_name(spec, fields))
        columns = ", ".join(field_sql(field) for field in fields)
        yield f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {table} ({columns})"


def unique_index_name(spec: CollectionSpec, fields: tuple[str, ...]) -> str:
    return f"ux_{spec.name}_{'_'.join(fields)}"


def field_sql(field: str) -> str:
    """The SQL for a field; the same text in indexes and queries, so the planner uses them."""
    if field in META_FIELDS:
        return field
    return f"json_extract(doc, '$.{check_field_name(field)}')"


def where_clause(conditions: Conditions) -> tuple[str, list[Any]]:
    parts: list[str] = []
    params: list[Any] = []
    for field, wanted in conditions:
        check_filter_value(field, wanted)
        sql, values = _condition(field_sql(field), wanted)
        parts.append(sql)
        params.extend(values)
    return (" AND ".join(parts) or "1"), params


def _condition(expr: str, wanted: Any) -> tuple[str, list[Any]]:
    """Equality; a list means "any of"; None means null or missing (json_extract gives NULL)."""
    if wanted is None:
        return f"{expr} IS NULL", []
    if not isinstance(wanted, (list, tuple)):
        return f"{expr} = ?", [wanted]
    values = [value for value in wanted if value is not None]
    parts = [f"{expr} IN ({', '.join('?' for _ in values)})"] if values else []
    if len(values) < len(wanted):
        parts.append(f"{expr} IS NULL")
    return f"({' OR '.join(parts) or '0'})", values


def set_clause(fields: Mapping[str, Any], now: str) -> tuple[str, list[Any]]:
    params: list[Any] = [now]
    sql = "updated_at = ?"
    if fields:
        # Paths and values are bound too; json(?) keeps nested lists/dicts as JSON, not text.
        sql += f", doc = json_set(doc, {', '.join('?, json(?)' for _ in fields)})"
        for field, value in fields.items():
            params += [f"$.{check_field_name(field)}", dumps(value)]
    return sql, params


def quoted(identifier: str) -> str:
    # Identifiers are built from declared names only; this guards against a bad declaration.
    if not _IDENTIFIER.match(identifier):
        raise ValueError(f"not a safe SQL identifier: {identifier!r}")
    return f'"{identifier}"'


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
