"""The statestore contract: every backend must behave identically through the public API.

Each test that takes ``store`` runs on SQLite and on every Mongo target (see conftest.py).
Generic tests run once per repository ("kind") and derive their expectations in Python from the
records they created, so every declared filter and sort key is covered without a hand-written
table per key.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest

from fedgrpc.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from fedgrpc.statestore import (
    Record,
    Repository,
    SortOrder,
    StateStore,
    open_sqlite_statestore,
    open_statestore,
)

N_RECORDS = 10
SORT_ORDERS: tuple[SortOrder, ...] = ("asc", "desc")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00")


# --- record builders: varied values, repeats (ties) and None -----------------------------------
def pick(key: str, i: int) -> str | None:
    """Three distinct values with repeats, and None for every fifth record."""
    return None if i % 5 == 4 else f"{key}-{i % 3}"


def always(key: str, i: int) -> str:
    return f"{key}-{i % 3}"


def build_client(store: StateStore, i: int) -> Record:
    return store.clients.upsert(
        f"client-{i:02d}",
        status=pick("status", i),
        combiner_id=pick("combiner_id", i),
        combiner_name=pick("combiner_name", i),
        last_seen=pick("last_seen", i),
        ip=f"10.0.0.{i}",
    )


def build_combiner(store: StateStore, i: int) -> Record:
    return store.combiners.upsert(f"combiner-{i:02d}", status=pick("status", i), port=8000 + i)


def build_session(store: StateStore, i: int) -> Record:
    return store.sessions.create(name=pick("name", i), status=always("status", i), config={"i": i})


def build_round(store: StateStore, i: int) -> Record:
    return store.rounds.create(
        session_id=always("session_id", i), round_number=i, status=pick("status", i)
    )


def build_model(store: StateStore, i: int) -> Record:
    return store.models.create(
        parent_model=pick("parent_model", i),
        session_id=pick("session_id", i),
        name=pick("name", i),
        round_number=None if i % 5 == 4 else (i * 7) % 5,
    )


def build_package(store: StateStore, i: int) -> Record:
    return store.packages.create(
        name=always("name", i), file_name=f"p{i}.tgz", sha256=always("sha256", i), size=i % 4
    )


def build_status(store: StateStore, i: int) -> Record:
    return store.statuses.add(
        event_type=always("event_type", i),
        sender_name=always("sender_name", i),
        sender_role=always("sender_role", i),
        session_id=pick("session_id", i),
        status=pick("status", i),
        log_level=always("log_level", i),
        correlation_id=pick("correlation_id", i),
        round_id=pick("round_id", i),
    )


def build_validation(store: StateStore, i: int) -> Record:
    required = ("model_id", "session_id", "correlation_id", "sender_name", "sender_role")
    return store.validations.add(
        **{key: always(key, i) for key in required},
        receiver_name=always("receiver_name", i),
        receiver_role=always("receiver_role", i),
        metrics={"accuracy": i / 10},
        round_id=pick("round_id", i),
    )


def build_metric(store: StateStore, i: int) -> Record:
    return store.metrics.add(
        key=always("key", i),
        value=float((i * 7) % 5),
        model_id=pick("model_id", i),
        session_id=pick("session_id", i),
        round_id=pick("round_id", i),
        step=(i * 3) % 4,
        sender_name=pick("sender_name", i),
        sender_role=pick("sender_role", i),
    )


def build_revocation(store: StateStore, i: int) -> Record:
    return store.revocations.revoke(
        f"jti-{i:02d}", subject=pick("subject", i), role=pick("role", i)
    )


def build_analysis(store: StateStore, i: int) -> Record:
    nodes = [f"node-{i}", f"node-{i + 1}"]
    return store.analyses.create(
        project_id=always("project_id", i),
        entrypoint="pkg.mod:main",
        nodes=nodes,
        aggregator=nodes[i % 2],
        status=always("status", i),
    )


def build_analysis_log(store: StateStore, i: int) -> Record:
    return store.analysis_logs.add(
        analysis_id=always("analysis_id", i),
        node_id=always("node_id", i),
        log_type=always("log_type", i),
        message=f"line {i}",
    )


def build_message(store: StateStore, i: int) -> Record:
    return store.messages.add(
        message_id=uuid.uuid4().hex,
        analysis_id=always("analysis_id", i),
        sender=always("sender", i),
        recipient=always("recipient", i),
        sequence=(i * 7) % 5,
        expires_at=f"2030-01-0{1 + i % 3}T00:00:00.000000+00:00",
        status=always("status", i),
    )


def build_object(store: StateStore, i: int) -> Record:
    return store.objects.create(
        analysis_id=always("analysis_id", i),
        sender=always("sender", i),
        kind=("intermediate", "result")[i % 2],
        blob_id=f"object-{i}",
        size=i % 4,
        sha256="0" * 64,
        tag=pick("tag", i),
    )


@dataclass(frozen=True)
class Kind:
    attr: str
    build: Callable[[StateStore, int], Record]

    def repo(self, store: StateStore) -> Repository:
        repository: Repository = getattr(store, self.attr)
        return repository


KINDS = [
    Kind("clients", build_client),
    Kind("combiners", build_combiner),
    Kind("sessions", build_session),
    Kind("rounds", build_round),
    Kind("models", build_model),
    Kind("packages", build_package),
    Kind("statuses", build_status),
    Kind("validations", build_validation),
    Kind("metrics", build_metric),
    Kind("revocations", build_revocation),
    Kind("analyses", build_analysis),
    Kind("analysis_logs", build_analysis_log),
    Kind("messages", build_message),
    Kind("objects", build_object),
]
each_kind = pytest.mark.parametrize("kind", KINDS, ids=[kind.attr for kind in KINDS])


def populate(store: StateStore, kind: Kind) -> list[Record]:
    """N records, then touched out of order so updated_at order differs from created_at order."""
    repo = kind.repo(store)
    created = [kind.build(store, i) for i in range(N_RECORDS)]
    for i in (7, 2, 9, 0, 5):
        repo.update(created[i]["id"])
    return [repo.get(record["id"]) for record in created]


def ids(records: Iterable[Record]) -> list[str]:
    return [record["id"] for record in records]


def matches(value: Any, wanted: Any) -> bool:
    """The filter semantics, in Python: list = any of, None = null or missing."""
    if isinstance(wanted, (list, tuple)):
        return any(matches(value, item) for item in wanted)
    return value is None if wanted is None else bool(value == wanted)


def sort_value(record: Record, key: str) -> tuple[bool, Any, str]:
    """Nulls first (as both backends order them ascending), then value, then the id tie-break."""
    value = record.get(key)
    return (value is not None, 0 if value is None else value, record["id"])


def run_in_threads(count: int, work: Callable[[int], None]) -> None:
    start = threading.Barrier(count)

    def started(index: int) -> None:
        start.wait()
        work(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        for future in [pool.submit(started, index) for index in range(count)]:
            future.result()  # re-raises a worker's exception


# --- every repository: get / update / delete, filters, sorting, paging, errors ----------------
@each_kind
def test_get_update_delete(store: StateStore, kind: Kind) -> None:
    repo = kind.repo(store)
    record = kind.build(store, 0)
    assert "_id" not in record
    assert re.fullmatch(r"[0-9a-f]{32}", record["id"])
    assert repo.get(record["id"]) == record

    updated = repo.update(record["id"], note="hello", extra={"nested": [1, "two"]})
    assert updated["note"] == "hello"
    assert updated["extra"] == {"nested": [1, "two"]}
    assert updated["created_at"] == record["created_at"]
    assert updated["updated_at"] > record["updated_at"]
    assert repo.get(record["id"]) == updated

    assert repo.delete(record["id"]) is True
    assert repo.delete(record["id"]) is False
    with pytest.raises(NotFound, match=f"{repo.spec.noun} '{record['id']}' not found"):
        repo.get(record["id"])
    with pytest.raises(NotFound):
        repo.update(record["id"], note="again")


@each_kind
def test_every_filter_matches_equality_any_of_and_null(store: StateStore, kind: Kind) -> None:
    records = populate(store, kind)
    repo = kind.repo(store)
    for key in repo.spec.filter_keys:
        first, second = records[0].get(key), records[1].get(key)
        for wanted in (first, [first, second], (second,), None, [None, first], []):
            expected = sorted(ids(r for r in records if matches(r.get(key), wanted)))
            filters: dict[str, Any] = {key: wanted}
            found = repo.list(**filters)
            assert sorted(ids(found["result"])) == expected, filters
            assert found["count"] == len(expected), filters
            assert repo.count(**filters) == len(expected), filters
        assert repo.count(**{key: first}) >= 1, key  # the equality case matched something


@each_kind
def test_sort_by_every_sort_key_in_both_orders(store: StateStore, kind: Kind) -> None:
    records = populate(store, kind)
    repo = kind.repo(store)
    for key in repo.spec.all_sort_keys:
        ascending = ids(sorted(records, key=lambda record: sort_value(record, key)))
        assert ids(repo.list(sort_key=key, sort_order="asc")["result"]) == ascending, key
        descending = ids(repo.list(sort_key=key, sort_order="desc")["result"])
        assert descending == ascending[::-1], key


@each_kind
def test_pages_are_stable_disjoint_and_complete(store: StateStore, kind: Kind) -> None:
    records = populate(store, kind)
    repo = kind.repo(store)
    newest_first = ids(sorted(records, key=lambda record: record["created_at"], reverse=True))
    assert ids(repo.list()["result"]) == newest_first  # the default: created_at, descending
    for sort_key in ("created_at", repo.spec.sort_keys[0]):
        for order in SORT_ORDERS:
            everything = ids(repo.list(sort_key=sort_key, sort_order=order)["result"])
            pages = [
                repo.list(limit=3, skip=skip, sort_key=sort_key, sort_order=order)
                for skip in range(0, N_RECORDS + 3, 3)
            ]
            assert all(page["count"] == N_RECORDS for page in pages)
            assert [record_id for page in pages for record_id in ids(page["result"])] == everything
            assert len(set(everything)) == N_RECORDS
    assert len(repo.list(limit=0)["result"]) == N_RECORDS  # 0 means no limit
    assert repo.list(skip=N_RECORDS) == {"count": N_RECORDS, "result": []}


@each_kind
def test_counts_with_and_without_filters(store: StateStore, kind: Kind) -> None:
    repo = kind.repo(store)
    assert repo.count() == 0
    assert repo.list() == {"count": 0, "result": []}
    records = populate(store, kind)
    key = repo.spec.filter_keys[0]
    assert repo.count() == N_RECORDS
    assert repo.count(**{key: records[0][key]}) == sum(
        matches(record.get(key), records[0][key]) for record in records
    )


@each_kind
def test_unknown_filter_or_sort_key_names_the_allowed_ones(store: StateStore, kind: Kind) -> None:
    repo = kind.repo(store)
    with pytest.raises(InvalidArgument, match="unknown filter 'colour'") as filter_error:
        repo.list(colour="red")
    assert all(key in str(filter_error.value) for key in repo.spec.filter_keys)
    with pytest.raises(InvalidArgument, match="unknown filter"):
        repo.count(colour="red")
    with pytest.raises(InvalidArgument, match="unknown sort key 'colour'") as sort_error:
        repo.list(sort_key="colour")
    assert all(key in str(sort_error.value) for key in repo.spec.all_sort_keys)


def test_bad_paging_arguments_and_filter_values_are_refused(store: StateStore) -> None:
    bad_calls: list[dict[str, Any]] = [
        {"limit": -1},
        {"skip": -1},
        {"limit": "5"},
        {"skip": None},
        {"limit": True},
        {"sort_order": "up"},
        {"sort_key": "name'); DROP TABLE sessions; --"},
        {"status": {"$ne": "x"}},
        {"status": [["nested"]]},
        {"name') OR 1=1 --": "x"},
    ]
    for kwargs in bad_calls:
        with pytest.raises(InvalidArgument):
            store.sessions.list(**kwargs)
    assert store.sessions.count() == 0  # and the table is still there


# --- records, values and timestamps ---------------------------------------------------------
def test_json_values_round_trip_unchanged(store: StateStore) -> None:
    values: dict[str, Any] = {
        "text": "åäö ✓ 'quoted' \"double\"",
        "small": -(2**63),
        "large": 2**63 - 1,
        "ratio": 0.1,
        "yes": True,
        "no": False,
        "nothing": None,
        "items": [1, "a", None, [2.5], {"k": "v"}],
        "nested": {"a": {"b": {"c": []}}, "metrics": {"val.acc": 0.5}},
        "pair": (1, 2),
    }
    created = store.sessions.create(config={}, **values)
    expected = {**values, "pair": [1, 2]}
    assert {key: created[key] for key in values} == expected
    fetched = store.sessions.get(created["id"])
    assert {key: fetched[key] for key in values} == expected
    updated = store.sessions.update(created["id"], **values)
    assert {key: updated[key] for key in values} == expected


def test_invalid_values_and_field_names_are_refused(store: StateStore) -> None:
    session = store.sessions.create(config={})
    bad_fields: list[dict[str, Any]] = [
        {"score": float("nan")},
        {"score": float("inf")},
        {"tags": {"a", "b"}},
        {"mapping": {1: "a"}},
        {"query": {"$gt": 1}},
        {"big": 2**64},
        {"a.b": 1},
        {"$set": 1},
        {"_id": "x"},
        {"created_at": "2020-01-01"},
        {"updated_at": "2020-01-01"},
    ]
    for fields in bad_fields:
        with pytest.raises(InvalidArgument):
            store.sessions.update(session["id"], **fields)
        with pytest.raises(InvalidArgument):
            store.sessions.create(config={}, **fields)
    with pytest.raises(InvalidArgument, match="managed"):
        store.sessions.update(session["id"], id="other")
    assert store.sessions.get(session["id"]) == session
    assert store.sessions.count() == 1


def test_timestamps_sort_lexically_and_only_updated_at_moves(store: StateStore) -> None:
    first = store.sessions.create(config={})
    second = store.sessions.create(config={})
    for stamp in (first["created_at"], first["updated_at"], second["created_at"]):
        assert TIMESTAMP.fullmatch(stamp), stamp
    assert first["created_at"] == first["updated_at"]
    assert first["created_at"] < second["created_at"]

    updated = store.sessions.update(first["id"], status="running")
    touched = store.sessions.update(first["id"])  # no fields: still a write
    assert updated["created_at"] == touched["created_at"] == first["created_at"]
    assert first["updated_at"] < updated["updated_at"] < touched["updated_at"]

    client = store.clients.upsert("c", status="online")
    refreshed = store.clients.upsert("c", status="online")
    assert refreshed["created_at"] == client["created_at"]
    assert refreshed["updated_at"] > client["updated_at"]


# --- compare-and-set ----------------------------------------------------------------------
def test_compare_and_set_succeeds_only_while_the_expectation_holds(store: StateStore) -> None:
    session = store.sessions.create(config={}, status="created")
    sid = session["id"]
    running = store.sessions.update(sid, expect={"status": "created"}, status="running")
    assert running["status"] == "running"
    with pytest.raises(Aborted, match=sid):
        store.sessions.update(sid, expect={"status": "created"}, status="stolen")
    assert store.sessions.get(sid)["status"] == "running"

    store.sessions.update(sid, expect={"owner": None}, owner="me")  # None: null or missing
    with pytest.raises(Aborted):
        store.sessions.update(sid, expect={"owner": None}, owner="you")
    done = store.sessions.update(sid, expect={"status": ["paused", "running"]}, status="done")
    assert done["status"] == "done"

    # Optimistic concurrency on the record as a whole: expect the updated_at you read.
    store.sessions.update(sid, expect={"updated_at": done["updated_at"]}, note="first")
    with pytest.raises(Aborted):
        store.sessions.update(sid, expect={"updated_at": done["updated_at"]}, note="second")
    with pytest.raises(NotFound, match="session 'missing' not found"):
        store.sessions.update("missing", expect={"status": "done"}, status="x")


def test_a_transaction_commits_its_writes_together_where_the_backend_can(
    store: StateStore,
) -> None:
    session = store.sessions.create(config={}, status="running")
    with store.transaction():
        model = store.models.create(parent_model=None, session_id=session["id"])
        assert store.models.set_active(model["id"]) == model  # sees its own insert
        store.sessions.update(session["id"], model_id=model["id"])
    assert store.models.get_active() == model
    assert store.sessions.get(session["id"])["model_id"] == model["id"]

    created: list[Record] = []

    def create_then_fail() -> None:
        with store.transaction():
            created.append(store.models.create(parent_model=model["id"], session_id=session["id"]))
            store.sessions.update(session["id"], expect={"status": "stopped"}, model_id="x")

    with pytest.raises(Aborted):
        create_then_fail()
    # SQLite undoes the whole block; MongoDB keeps the writes made before the failure.
    kept = store.models.count(parent_model=model["id"])
    assert kept == (0 if store.backend == "sqlite" else 1)
    if kept:
        assert store.models.get(created[0]["id"])["parent_model"] == model["id"]
    assert store.sessions.get(session["id"])["model_id"] == model["id"]
    assert store.sessions.update(session["id"], note="after")["note"] == "after"  # usable


# --- named records: clients and combiners -------------------------------------------------
@pytest.mark.parametrize("attr", ["clients", "combiners"])
def test_upsert_creates_then_updates_by_name(store: StateStore, attr: str) -> None:
    repo = getattr(store, attr)
    created = repo.upsert("alpha", status="online")
    again = repo.upsert("alpha", status="offline", ip="10.1.1.1")
    assert again["id"] == created["id"]
    assert again["created_at"] == created["created_at"]
    assert (again["name"], again["status"], again["ip"]) == ("alpha", "offline", "10.1.1.1")
    assert repo.count() == 1
    assert repo.get_by_name("alpha") == again
    with pytest.raises(NotFound, match="named 'beta' not found"):
        repo.get_by_name("beta")
    with pytest.raises(InvalidArgument, match="both match and fields"):
        repo.collection.upsert({"name": "alpha"}, {"name": "renamed"})
    with pytest.raises(InvalidArgument):
        repo.upsert("")


@pytest.mark.parametrize("attr", ["clients", "combiners"])
def test_names_are_unique(store: StateStore, attr: str) -> None:
    repo = getattr(store, attr)
    repo.upsert("alpha")
    beta = repo.upsert("beta")
    with pytest.raises(AlreadyExists, match="with name='alpha' already exists"):
        repo.update(beta["id"], name="alpha")
    with pytest.raises(AlreadyExists, match="with name='alpha' already exists"):
        repo.collection.insert({"name": "alpha"})
    assert repo.get(beta["id"])["name"] == "beta"
    assert repo.count() == 2


# --- sessions and rounds ------------------------------------------------------------------
def test_session_with_explicit_id_and_duplicate_id(store: StateStore) -> None:
    session = store.sessions.create(id="abc", name="first", config={"rounds": 3})
    assert session["id"] == "abc"
    assert (session["status"], session["config"]) == ("created", {"rounds": 3})
    with pytest.raises(AlreadyExists, match="session 'abc' already exists"):
        store.sessions.create(id="abc", config={})
    assert store.sessions.count() == 1
    with pytest.raises(InvalidArgument, match="config must be a dict"):
        store.sessions.create(config=[])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        store.sessions.create(id="", config={})


def test_round_numbers_are_unique_per_session(store: StateStore) -> None:
    first = store.rounds.create(session_id="s1", round_number=1, status="running")
    store.rounds.create(session_id="s2", round_number=1)
    with pytest.raises(AlreadyExists, match="session_id='s1', round_number=1"):
        store.rounds.create(session_id="s1", round_number=1)
    assert store.rounds.get_by_number("s1", 1) == first
    with pytest.raises(NotFound, match="round 2 of session 's1' not found"):
        store.rounds.get_by_number("s1", 2)
    for bad in (-1, "1", True, None):
        with pytest.raises(InvalidArgument):
            store.rounds.create(session_id="s1", round_number=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        store.rounds.create(session_id="", round_number=3)
    assert store.rounds.count() == 2


def test_last_round_number_is_the_highest_of_its_session(store: StateStore) -> None:
    assert store.rounds.last_number("s1") == 0
    for number in (2, 10, 9):  # numeric order, not insertion or text order
        store.rounds.create(session_id="s1", round_number=number)
    store.rounds.create(session_id="s2", round_number=11)
    assert store.rounds.last_number("s1") == 10
    assert store.rounds.last_number("s2") == 11


# --- models: lineage and the active model -------------------------------------------------
def model(store: StateStore, parent: Record | None, **fields: Any) -> Record:
    return store.models.create(
        parent_model=None if parent is None else parent["id"], session_id="s", **fields
    )


def test_model_with_explicit_id_and_duplicate_id(store: StateStore) -> None:
    seed = store.models.create(id="seed", parent_model=None, session_id=None, name="seed")
    assert seed["id"] == "seed"
    with pytest.raises(AlreadyExists, match="model 'seed' already exists"):
        store.models.create(id="seed", parent_model=None, session_id=None)


def test_ancestors_are_nearest_first_with_limit_and_include_self(store: StateStore) -> None:
    root = model(store, None)
    chain = [root]
    for _ in range(3):
        chain.append(model(store, chain[-1]))
    tip = chain[-1]["id"]
    assert ids(store.models.ancestors(tip)) == ids(chain[-2::-1])
    assert ids(store.models.ancestors(tip, include_self=True)) == ids(chain[::-1])
    assert ids(store.models.ancestors(tip, limit=2)) == ids([chain[2], chain[1]])
    assert ids(store.models.ancestors(tip, limit=2, include_self=True)) == ids(chain[:1:-1])
    assert store.models.ancestors(root["id"]) == []
    with pytest.raises(NotFound, match="model 'nope' not found"):
        store.models.ancestors("nope")
    with pytest.raises(InvalidArgument):
        store.models.ancestors(tip, limit=-1)


def test_lineage_stops_at_missing_parents_and_survives_cycles(store: StateStore) -> None:
    orphan = store.models.create(parent_model="deleted-model", session_id=None)
    assert store.models.ancestors(orphan["id"]) == []
    a = store.models.create(id="a", parent_model="b", session_id=None)
    b = store.models.create(id="b", parent_model="a", session_id=None)
    assert ids(store.models.ancestors("a")) == ["b"]
    assert ids(store.models.ancestors("a", include_self=True)) == ["a", "b"]
    assert ids(store.models.descendants("a")) == [b["id"]]
    assert ids(store.models.descendants("b", include_self=True)) == ["b", a["id"]]


def test_descendants_are_breadth_first_and_oldest_sibling_first(store: StateStore) -> None:
    root = model(store, None)
    first, second = model(store, root), model(store, root)
    # Created interleaved, so that plain created_at order would mix the two families.
    second_child = model(store, second)
    first_child = model(store, first)
    second_younger = model(store, second)
    leaf = model(store, first_child)
    model(store, None)  # unrelated

    expected = [first, second, first_child, second_child, second_younger, leaf]
    assert ids(store.models.descendants(root["id"])) == ids(expected)
    assert ids(store.models.descendants(root["id"], include_self=True)) == ids([root, *expected])
    assert ids(store.models.descendants(root["id"], limit=3)) == ids(expected[:3])
    assert ids(store.models.descendants(root["id"], limit=1, include_self=True)) == [root["id"]]
    assert store.models.descendants(leaf["id"]) == []
    with pytest.raises(NotFound):
        store.models.descendants("nope")


def make_active_candidate(store: StateStore, attr: str, i: int) -> Record:
    if attr == "models":
        return store.models.create(parent_model=None, session_id=None, name=f"m{i}")
    return store.packages.create(name=f"p{i}", file_name=f"p{i}.tgz", sha256="0" * 64, size=1)


@pytest.mark.parametrize("attr", ["models", "packages"])
def test_exactly_one_record_is_active(store: StateStore, attr: str) -> None:
    repo = getattr(store, attr)
    noun = repo.spec.noun
    with pytest.raises(NotFound, match=f"no active {noun} has been set"):
        repo.get_active()
    first, second = (make_active_candidate(store, attr, i) for i in range(2))
    with pytest.raises(NotFound, match=f"{noun} 'missing' not found"):
        repo.set_active("missing")
    with pytest.raises(NotFound):
        repo.get_active()

    assert repo.set_active(first["id"]) == first
    assert repo.get_active() == first
    repo.set_active(second["id"])
    assert repo.get_active() == second
    assert store.kv.get_value(repo.active_key) == second["id"]  # one pointer, one value

    repo.delete(second["id"])
    with pytest.raises(NotFound, match="no longer exists"):
        repo.get_active()


def test_a_record_in_hand_is_activated_without_reading_it_again(store: StateStore) -> None:
    session = store.sessions.create(config={}, status="running")
    with store.transaction():
        model = store.models.create(parent_model=None, session_id=session["id"])
        store.models.activate(model)
    assert store.models.get_active() == model
    other = store.models.create(parent_model=model["id"], session_id=session["id"])
    store.models.activate(other)
    assert store.models.get_active() == other
    assert store.kv.get_value(store.models.active_key) == other["id"]


def test_models_and_packages_have_separate_active_pointers(store: StateStore) -> None:
    active_model = make_active_candidate(store, "models", 0)
    active_package = make_active_candidate(store, "packages", 0)
    store.models.set_active(active_model["id"])
    store.packages.set_active(active_package["id"])
    assert store.models.get_active() == active_model
    assert store.packages.get_active() == active_package


# --- kv, events ----------------------------------------------------------------------------
def test_revocations_are_idempotent_and_listed(store: StateStore) -> None:
    assert store.revocations.token_ids() == []
    assert not store.revocations.is_revoked("jti-b")
    first = store.revocations.revoke("jti-b", subject="site-1", revoked_by="admin")
    again = store.revocations.revoke("jti-b", revoked_by="other-admin")
    store.revocations.revoke("jti-a")
    assert again["id"] == first["id"]
    assert again["subject"] == "site-1"
    assert again["revoked_by"] == "other-admin"
    assert store.revocations.is_revoked("jti-b")
    assert store.revocations.token_ids() == ["jti-a", "jti-b"]
    assert store.revocations.count() == 2
    with pytest.raises(InvalidArgument):
        store.revocations.revoke("")


def test_key_value_settings(store: StateStore) -> None:
    assert store.kv.get_value("round_timeout") is None
    store.kv.set_value("round_timeout", 180)
    store.kv.set_value("config", {"helper": "numpyhelper", "clients": [1, 2]})
    assert store.kv.get_value("round_timeout") == 180
    store.kv.set_value("round_timeout", None)
    assert store.kv.get_value("round_timeout") is None
    store.kv.set_value("round_timeout", "300")
    assert store.kv.get_value("round_timeout") == "300"
    assert store.kv.get_value("config") == {"helper": "numpyhelper", "clients": [1, 2]}
    assert store.kv.delete_value("round_timeout") is True
    assert store.kv.delete_value("round_timeout") is False
    assert store.kv.get_value("round_timeout") is None
    with pytest.raises(InvalidArgument):
        store.kv.set_value("", 1)
    with pytest.raises(InvalidArgument):
        store.kv.set_value("x", float("nan"))


def test_event_records_keep_their_fields_and_defaults(store: StateStore) -> None:
    status = store.statuses.add(event_type="MODEL_UPDATE", sender_name="c1", sender_role="client")
    assert (status["log_level"], status["message"], status["data"]) == ("INFO", "", None)
    metric = store.metrics.add(key="loss", value=1, step=3)
    assert metric["value"] == 1.0
    assert isinstance(metric["value"], float)
    with pytest.raises(InvalidArgument):
        store.metrics.add(key="loss", value=float("nan"))
    with pytest.raises(InvalidArgument):
        store.metrics.add(key="loss", value="high")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        store.validations.add(
            model_id="m",
            session_id="s",
            correlation_id="c",
            sender_name="c1",
            sender_role="client",
            receiver_name="ctrl",
            receiver_role="controller",
            metrics=[0.5],  # type: ignore[arg-type]
        )
    with pytest.raises(InvalidArgument):
        store.statuses.add(event_type="", sender_name="c1", sender_role="client")


# --- analyses, logs, broker messages, objects ------------------------------------------------
def test_analysis_nodes_start_with_roles_and_need_the_aggregator(store: StateStore) -> None:
    analysis = store.analyses.create(
        id="a1", project_id="p", entrypoint="m:f", nodes=["n1", "n2"], aggregator="n2"
    )
    assert analysis["status"] == "starting"
    assert [(n["node_id"], n["role"], n["status"], n["progress"]) for n in analysis["nodes"]] == [
        ("n1", "default", "starting", 0),
        ("n2", "aggregator", "starting", 0),
    ]
    with pytest.raises(AlreadyExists):
        store.analyses.create(
            id="a1", project_id="p", entrypoint="m:f", nodes=["n1"], aggregator="n1"
        )
    with pytest.raises(InvalidArgument, match="aggregator"):
        store.analyses.create(project_id="p", entrypoint="m:f", nodes=["n1"], aggregator="n9")


def test_analysis_modify_never_loses_a_concurrent_change(store: StateStore) -> None:
    store.analyses.create(id="a", project_id="p", entrypoint="m:f", nodes=["n"], aggregator="n")
    store.analyses.update("a", counter=0)

    def bump(_: int) -> None:
        for _ in range(10):
            store.analyses.modify("a", lambda rec: {"counter": rec["counter"] + 1})

    run_in_threads(4, bump)
    assert store.analyses.get("a")["counter"] == 40
    unchanged = store.analyses.get("a")
    assert store.analyses.modify("a", lambda rec: None) == unchanged


def test_messages_keep_arrival_order_per_recipient_and_move_once(store: StateStore) -> None:
    def add(message_id: str, recipient: str, sequence: int) -> Record:
        return store.messages.add(
            message_id=message_id,
            analysis_id="a",
            sender="s",
            recipient=recipient,
            sequence=sequence,
            expires_at="2030-01-01T00:00:00.000000+00:00",
            body="e30=",
        )

    for index in range(5):
        add(f"m{index}", "r1", index + 1)
        add(f"x{index}", "r2", index + 1)
    with pytest.raises(AlreadyExists):
        add("m0", "r1", 1)
    assert ids(store.messages.pending_for("r1")) == [f"m{i}" for i in range(5)]
    delivered = store.messages.mark("m1", "delivered", delivered_at="now")
    assert delivered is not None
    assert delivered["status"] == "delivered"
    assert store.messages.mark("m1", "delivered") is None  # a duplicate ack changes nothing
    assert store.messages.mark("m1", "expired") is None  # delivered is final
    assert store.messages.mark("missing", "delivered") is None
    assert ids(store.messages.pending_for("r1")) == ["m0", "m2", "m3", "m4"]
    with pytest.raises(InvalidArgument):
        store.messages.mark("m2", "lost")


def test_logs_come_back_oldest_first_and_objects_check_their_kind(store: StateStore) -> None:
    for index in range(4):
        store.analysis_logs.add(
            analysis_id="a", node_id=f"n{index % 2}", log_type="info", message=str(index)
        )
    assert [r["message"] for r in store.analysis_logs.for_analysis("a")] == ["0", "1", "2", "3"]
    assert [r["message"] for r in store.analysis_logs.for_analysis("a", node_id="n1")] == ["1", "3"]
    with pytest.raises(InvalidArgument):
        store.objects.create(
            analysis_id="a", sender="n", kind="other", blob_id="b", size=1, sha256=""
        )


# --- the generic collection underneath -----------------------------------------------------
def test_generic_collection_operations(store: StateStore) -> None:
    collection = store.sessions.collection
    fixed = collection.insert({"name": "a", "status": "x"}, id="fixed")
    with pytest.raises(AlreadyExists, match="session 'fixed' already exists"):
        collection.insert({}, id="fixed")
    assert collection.get("fixed") == fixed
    assert collection.find_one({"name": "a"}) == fixed
    assert collection.find_one({"name": "zzz"}) is None
    collection.insert({"name": "b", "status": "x"})
    collection.insert({"name": "c", "status": "y"})

    assert collection.update_many({"status": "x"}, {"status": "z", "flag": True}) == 2
    assert collection.count({"flag": True}) == 2
    assert collection.count({"status": "z"}) == 2
    assert collection.update_many({"status": "nope"}, {"status": "q"}) == 0
    assert collection.delete_many({"status": "z"}) == 2
    assert collection.count({}) == 1

    upserted = collection.upsert({"name": "d"}, {"status": "new"})
    again = collection.upsert({"name": "d"}, {"status": "newer"})
    assert (again["id"], again["status"]) == (upserted["id"], "newer")
    by_id = collection.upsert({"id": "explicit"}, {"value": 1})
    assert by_id["id"] == "explicit"
    with pytest.raises(InvalidArgument):
        collection.count({"status": {"$ne": "x"}})  # no operator smuggling, even down here
    assert collection.delete_many({}) == 3
    assert collection.count({}) == 0


# --- concurrency -------------------------------------------------------------------------
def test_concurrent_inserts_from_eight_threads_all_land(store: StateStore) -> None:
    def insert_fifty(thread: int) -> None:
        for i in range(50):
            store.statuses.add(
                event_type="tick", sender_name=f"t{thread}", sender_role="client", message=str(i)
            )

    run_in_threads(8, insert_fifty)
    assert store.statuses.count() == 400
    assert store.statuses.count(sender_name="t3") == 50


def test_concurrent_compare_and_set_increments_are_never_lost(store: StateStore) -> None:
    session = store.sessions.create(config={}, counter=0)

    def increment(_: int) -> None:
        for _ in range(25):
            while True:
                seen = store.sessions.get(session["id"])["counter"]
                try:
                    store.sessions.update(session["id"], expect={"counter": seen}, counter=seen + 1)
                    break
                except Aborted:
                    continue  # another thread won this round: re-read and retry

    run_in_threads(8, increment)
    assert store.sessions.get(session["id"])["counter"] == 200


def test_concurrent_upserts_of_one_name_make_one_record(store: StateStore) -> None:
    def upsert_shared(thread: int) -> None:
        store.clients.upsert("shared", **{f"t{thread}": True})

    run_in_threads(8, upsert_shared)
    assert store.clients.count() == 1
    record = store.clients.get_by_name("shared")
    assert all(record[f"t{thread}"] is True for thread in range(8))


# --- lifecycle: ping, close, indexes, factory -----------------------------------------------
def test_ping_and_close(store: StateStore) -> None:
    store.ping()
    store.close()
    store.close()  # idempotent
    with pytest.raises(FailedPrecondition, match="closed"):
        store.ping()
    with pytest.raises(FailedPrecondition, match="closed"):
        store.sessions.list()


def test_declared_indexes_exist(
    store: StateStore, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    repos: list[Repository] = [kind.repo(store) for kind in KINDS]
    if store.backend == "sqlite":
        with sqlite3.connect(tmp_path / "state" / "statestore.sqlite3") as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
            names = {row[0] for row in rows}
        for repo in repos:
            spec = repo.spec
            assert {f"ix_{spec.name}_{key}" for key in spec.indexed} <= names
            assert {f"ux_{spec.name}_{'_'.join(fields)}" for fields in spec.unique} <= names
        return
    database = request.getfixturevalue("mongo_database")
    for repo in repos:
        spec = repo.spec
        info = database[spec.name].index_information()
        assert {f"ix_{key}" for key in ("created_at", *spec.indexed)} <= info.keys()
        for fields in spec.unique:
            assert info[f"ux_{'_'.join(fields)}"].get("unique") is True


def test_factory_opens_sqlite_in_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "state"
    with open_statestore(data_dir=data_dir) as store:
        assert store.backend == "sqlite"
        store.ping()
        store.sessions.create(id="kept", config={})
    database_file = data_dir / "statestore.sqlite3"
    assert database_file.is_file()
    with sqlite3.connect(database_file) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with open_statestore(data_dir=data_dir) as reopened:  # the data outlives the process
        assert reopened.sessions.get("kept")["id"] == "kept"


def test_factory_opens_mongo_for_a_mongodb_uri(secantus_uri: str, tmp_path: Path) -> None:
    name = f"fedgrpc_factory_{uuid.uuid4().hex[:12]}"
    try:
        with open_statestore(
            mongo_uri=secantus_uri, mongo_database=name, data_dir=tmp_path
        ) as store:
            assert store.backend == "mongo"
            store.ping()
            store.sessions.create(id="kept", config={})
        assert not (tmp_path / "statestore.sqlite3").exists()
    finally:
        client: pymongo.MongoClient[dict[str, Any]]
        with pymongo.MongoClient(secantus_uri) as client:
            assert client[name]["sessions"].count_documents({"_id": "kept"}) == 1
            client.drop_database(name)


def test_factory_refuses_missing_or_foreign_configuration(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no statestore configured"):
        open_statestore()
    with pytest.raises(InvalidArgument, match="mongodb://"):
        open_statestore(mongo_uri="postgres://db.example/state", data_dir=tmp_path)
    with pytest.raises(InvalidArgument, match="mongo_uri is not usable"):
        open_statestore(mongo_uri="mongodb+srv://")


def test_unreachable_backends_are_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable):
        open_statestore(mongo_uri="mongodb://127.0.0.1:1/", server_selection_timeout_ms=200)
    with pytest.raises(Unavailable):
        open_sqlite_statestore(tmp_path)  # a directory, not a database file


def test_ping_reports_a_stopped_mongo_server_as_unavailable(tmp_path: Path) -> None:
    from secantus import SecantusDBServer

    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=str(tmp_path))
    server.start()
    try:
        store = open_statestore(mongo_uri=server.uri, server_selection_timeout_ms=300)
        store.ping()
    finally:
        server.stop()
    with store, pytest.raises(Unavailable, match="unreachable"):
        store.ping()
