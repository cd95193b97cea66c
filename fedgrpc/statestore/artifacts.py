"""Models and compute packages: records with an "active" one and, for models, a lineage.

The active model or package is a pointer: ONE document in the key/value collection, written in
one atomic step. Flags on many records would need a multi-record transaction to guarantee that
exactly one is active; a pointer cannot have two values.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from fedgrpc.errors import InvalidArgument, NotFound

from .base import Collection, CollectionSpec, Record, Records
from .repositories import KeyValueStore, Repository, optional_text, require_count, require_text

_IN_CHUNK = 500  # parent ids per "any of" query; stays far below SQLite's bound-variable limit


class ActiveRecordRepository(Repository):
    """A repository with one active record, remembered under ``active_key`` in the kv store."""

    active_key: ClassVar[str]

    def __init__(self, collection: Collection, kv: KeyValueStore) -> None:
        super().__init__(collection)
        self._kv = kv

    def set_active(self, record_id: str) -> Record:
        """Make ``record_id`` the active one (replacing any other); NotFound if it is missing."""
        record = self.get(record_id)
        self.activate(record)
        return record

    def activate(self, record: Record) -> None:
        """Make ``record``, just created or read by the caller, the active one: inside the
        caller's transaction, with no second read of it (a round's commit does this)."""
        self._kv.set_value(self.active_key, record["id"])

    def get_active(self) -> Record:
        active_id = self._kv.get_value(self.active_key)
        if active_id is None:
            raise NotFound(f"no active {self.spec.noun} has been set")
        try:
            return self.get(str(active_id))
        except NotFound:
            raise NotFound(f"the active {self.spec.noun} '{active_id}' no longer exists") from None


class ModelRepository(ActiveRecordRepository):
    spec = CollectionSpec(
        name="models",
        noun="model",
        filter_keys=("session_id", "parent_model", "name", "scope"),
        sort_keys=("name", "round_number", "session_id"),
    )
    active_key = "active_model"

    def create(
        self,
        *,
        id: str | None = None,
        parent_model: str | None,
        session_id: str | None,
        name: str | None = None,
        round_number: int | None = None,
        **fields: Any,
    ) -> Record:
        """A new model record; ``parent_model`` is the id of the model it was trained from."""
        optional_text(parent_model, "parent_model", "model")
        optional_text(session_id, "session_id", "model")
        if round_number is not None:
            require_count(round_number, "round_number", "model")
        doc = {
            "parent_model": parent_model,
            "session_id": session_id,
            "name": name,
            "round_number": round_number,
            **fields,
        }
        return self._collection.insert(doc, id=id)

    def ancestors(
        self, record_id: str, *, limit: int | None = None, include_self: bool = False
    ) -> Records:
        """Parent, grandparent, ... nearest first; stops at a missing parent or a cycle."""
        check_limit(limit)
        current = self.get(record_id)
        trail = [current] if include_self else []
        seen = {current["id"]}
        while not _is_full(trail, limit):
            parent = self._parent_of(current, seen)
            if parent is None:
                break
            trail.append(parent)
            seen.add(parent["id"])
            current = parent
        return trail

    def descendants(
        self, record_id: str, *, limit: int | None = None, include_self: bool = False
    ) -> Records:
        """Children, grandchildren, ... breadth-first; oldest first among siblings."""
        check_limit(limit)
        root = self.get(record_id)
        found = [root] if include_self else []
        seen = {root["id"]}
        level = [root["id"]]
        while level and not _is_full(found, limit):
            next_level = []
            for child in self._children_of(level):
                if child["id"] not in seen:  # a cycle leads back to a model already listed
                    seen.add(child["id"])
                    found.append(child)
                    next_level.append(child["id"])
            level = next_level
        return found[:limit] if limit else found

    def _parent_of(self, model: Record, seen: set[str]) -> Record | None:
        """The parent record, or None if there is none, it is missing, or it closes a cycle."""
        parent_id = model.get("parent_model")
        if not isinstance(parent_id, str) or parent_id in seen:
            return None
        return self._collection.find_one({"id": parent_id})

    def _children_of(self, parent_ids: Sequence[str]) -> Iterator[Record]:
        """Children grouped by their parent's position in ``parent_ids``, oldest first."""
        position = {parent_id: index for index, parent_id in enumerate(parent_ids)}
        children: Records = []
        for start in range(0, len(parent_ids), _IN_CHUNK):
            chunk = list(parent_ids[start : start + _IN_CHUNK])
            children += self._collection.list(
                {"parent_model": chunk}, sort_key="created_at", sort_order="asc"
            )
        # sorted() is stable, so created_at order survives within each parent.
        return iter(sorted(children, key=lambda child: position[child["parent_model"]]))


class PackageRepository(ActiveRecordRepository):
    spec = CollectionSpec(
        name="packages",
        noun="package",
        filter_keys=("name", "sha256"),
        sort_keys=("name", "size"),
    )
    active_key = "active_package"

    def create(
        self,
        *,
        name: str,
        file_name: str,
        sha256: str,
        size: int,
        helper: str | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> Record:
        """A new compute-package record (the bytes live elsewhere; ``sha256`` identifies them)."""
        require_text(name, "name", "package")
        require_text(file_name, "file_name", "package")
        require_text(sha256, "sha256", "package")
        require_count(size, "size", "package")
        doc = {
            "name": name,
            "file_name": file_name,
            "sha256": sha256,
            "size": size,
            "helper": helper,
            "description": description,
            **fields,
        }
        return self._collection.insert(doc)


def check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise InvalidArgument(f"limit must be an integer >= 0 (0 or None: no limit), got {limit!r}")


def _is_full(records: Records, limit: int | None) -> bool:
    return bool(limit) and len(records) >= (limit or 0)
