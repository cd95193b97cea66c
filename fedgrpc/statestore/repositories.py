"""Typed repositories: the statestore's public interface, one per record kind.

Each repository declares its collection (:class:`CollectionSpec`): the filter keys and sort keys
callers may use, and its unique fields. Anything else is refused with ``InvalidArgument`` before
it reaches a backend, which also keeps user input out of SQL. Lists come back in FEDn's shape,
``{"count": total_matching, "result": [records]}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypedDict

from fedgrpc.errors import InvalidArgument, NotFound

from .base import (
    Collection,
    CollectionSpec,
    Record,
    Records,
    SortOrder,
    check_filters,
    check_page,
    check_record_id,
)


class ListResult(TypedDict):
    count: int  # all records matching the filters, regardless of limit and skip
    result: Records


class Repository:
    """get / list / count / update / delete, shared by every record kind."""

    spec: ClassVar[CollectionSpec]

    def __init__(self, collection: Collection) -> None:
        self._collection = collection

    @property
    def collection(self) -> Collection:
        """The backend collection, for bulk steps (e.g. mark every client offline at start-up).

        It trusts its caller: no filter allow-list applies there.
        """
        return self._collection

    def get(self, record_id: str) -> Record:
        return self._collection.get(record_id)

    def list(
        self,
        *,
        limit: int | None = None,
        skip: int = 0,
        sort_key: str = "created_at",
        sort_order: SortOrder = "desc",
        **filters: Any,
    ) -> ListResult:
        """One page of matching records plus the total; ``limit`` 0 or None means all."""
        self._check_filters(filters)
        check_page(limit=limit, skip=skip, sort_key=sort_key, sort_order=sort_order, spec=self.spec)
        page = self._collection.list(
            filters, limit=limit, skip=skip, sort_key=sort_key, sort_order=sort_order
        )
        return {"count": self._collection.count(filters), "result": page}

    def count(self, **filters: Any) -> int:
        self._check_filters(filters)
        return self._collection.count(filters)

    def update(
        self, record_id: str, /, *, expect: Mapping[str, Any] | None = None, **fields: Any
    ) -> Record:
        """Set top-level fields atomically; with ``expect``, only if those values still hold.

        ``expect`` matches like a filter (a list means "any of", None "null or missing");
        when it no longer holds the update is refused with ``Aborted``.
        """
        if expect:
            # Any field may be compared; the check here is for the values' types only.
            check_filters(expect, expect.keys(), noun=self.spec.noun)
        return self._collection.update(record_id, fields, expect=expect)

    def delete(self, record_id: str) -> bool:
        """True if the record existed."""
        return self._collection.delete(record_id)

    def _check_filters(self, filters: Mapping[str, Any]) -> None:
        check_filters(filters, self.spec.filter_keys, noun=self.spec.noun)


class NamedRepository(Repository):
    """Records that have a unique ``name`` and are created or refreshed by it."""

    def upsert(self, name: str, **fields: Any) -> Record:
        """Create the record called ``name`` or update its fields, in one atomic step."""
        require_text(name, "name", self.spec.noun)
        return self._collection.upsert({"name": name}, fields)

    def get_by_name(self, name: str) -> Record:
        found = self._collection.find_one({"name": name})
        if found is None:
            raise NotFound(f"{self.spec.noun} named '{name}' not found")
        return found


class ClientRepository(NamedRepository):
    spec = CollectionSpec(
        name="clients",
        noun="client",
        filter_keys=("name", "status", "combiner_id", "combiner_name"),
        sort_keys=("name", "status", "last_seen", "combiner_name"),
        unique=(("name",),),
    )


class CombinerRepository(NamedRepository):
    spec = CollectionSpec(
        name="combiners",
        noun="combiner",
        filter_keys=("name", "status"),
        sort_keys=("name", "status"),
        unique=(("name",),),
    )


class SessionRepository(Repository):
    spec = CollectionSpec(
        name="sessions",
        noun="session",
        filter_keys=("status", "name", "scope"),
        sort_keys=("name", "status"),
    )

    def create(
        self,
        *,
        id: str | None = None,
        name: str | None = None,
        status: str = "created",
        config: dict[str, Any],
        **fields: Any,
    ) -> Record:
        """A new session; an explicit ``id`` that is taken raises ``AlreadyExists``."""
        if not isinstance(config, dict):
            raise InvalidArgument(f"session config must be a dict, got {type(config).__name__}")
        doc = {"name": name, "status": status, "config": config, **fields}
        return self._collection.insert(doc, id=id)


class RoundRepository(Repository):
    spec = CollectionSpec(
        name="rounds",
        noun="round",
        filter_keys=("session_id", "status", "round_number"),
        sort_keys=("round_number", "status", "session_id"),
        unique=(("session_id", "round_number"),),
    )

    def create(self, *, session_id: str, round_number: int, **fields: Any) -> Record:
        """A new round; a second round with the same number in a session is ``AlreadyExists``."""
        require_text(session_id, "session_id", "round")
        require_count(round_number, "round_number", "round")
        doc = {"session_id": session_id, "round_number": round_number, **fields}
        return self._collection.insert(doc)

    def last_number(self, session_id: str) -> int:
        """The highest round number of the session, 0 before its first round (one indexed
        read: no count of the session's rounds, which grows with every round)."""
        latest = self._collection.list(
            {"session_id": session_id}, limit=1, sort_key="round_number", sort_order="desc"
        )
        return int(latest[0]["round_number"]) if latest else 0

    def get_by_number(self, session_id: str, round_number: int) -> Record:
        found = self._collection.find_one({"session_id": session_id, "round_number": round_number})
        if found is None:
            raise NotFound(f"round {round_number} of session '{session_id}' not found")
        return found


class RevocationRepository(Repository):
    """Revoked token ids (a token's ``jti``): once here, a token is refused everywhere."""

    spec = CollectionSpec(
        name="revoked_tokens",
        noun="revoked token",
        filter_keys=("token_id", "subject", "role"),
        sort_keys=("token_id",),
        unique=(("token_id",),),
    )

    def revoke(self, token_id: str, **fields: Any) -> Record:
        """Record ``token_id`` as revoked; revoking it again keeps one record (idempotent)."""
        require_text(token_id, "token_id", self.spec.noun)
        return self._collection.upsert({"token_id": token_id}, fields)

    def is_revoked(self, token_id: str) -> bool:
        return self._collection.find_one({"token_id": token_id}) is not None

    def token_ids(self) -> list[str]:
        """Every revoked id (the list combiners get when they register)."""
        found = self._collection.list({}, limit=None, skip=0, sort_key="token_id", sort_order="asc")
        return [str(record["token_id"]) for record in found]


class KeyValueStore:
    """Small controller state and settings, one record per key (the key is the record id)."""

    spec = CollectionSpec(name="kv", noun="setting")

    def __init__(self, collection: Collection) -> None:
        self._collection = collection

    def get_value(self, key: str) -> Any | None:
        found = self._collection.find_one({"id": check_record_id(key, "setting")})
        return None if found is None else found.get("value")

    def set_value(self, key: str, value: Any) -> None:
        """Create or replace, atomically (one document, one write)."""
        self._collection.upsert({"id": check_record_id(key, "setting")}, {"value": value})

    def delete_value(self, key: str) -> bool:
        """True if the key was set."""
        return self._collection.delete(check_record_id(key, "setting"))


# --- argument checks shared by the repositories ----------------------------------------------
def require_text(value: object, field: str, noun: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{noun} {field} must be a non-empty string, got {value!r}")
    return value


def optional_text(value: object, field: str, noun: str) -> str | None:
    return None if value is None else require_text(value, field, noun)


def require_count(value: object, field: str, noun: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{noun} {field} must be an integer >= 0, got {value!r}")
    return value
