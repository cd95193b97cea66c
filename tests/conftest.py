"""Shared fixtures: a real MongoDB-wire server, and an optional external ``mongod``.

The Mongo backends are tested over a real TCP connection. By default a SecantusDB server (the
MongoDB wire protocol over WiredTiger, a test-only dependency) is started once per session on
port 0; when ``FEDGRPC_TEST_MONGO_URI`` is set, every Mongo test also runs against that server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pymongo
import pytest
from pymongo.database import Database

EXTERNAL_MONGO_ENV = "FEDGRPC_TEST_MONGO_URI"

MONGO_TARGETS = ["secantus"] + (["external"] if os.environ.get(EXTERNAL_MONGO_ENV) else [])


@pytest.fixture(scope="session")
def secantus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a SecantusDB server on a free loopback port, alive for the whole test session."""
    from secantus import SecantusDBServer

    storage = tmp_path_factory.mktemp("secantus")
    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=str(storage))
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture(params=MONGO_TARGETS)
def mongo_uri(request: pytest.FixtureRequest) -> str:
    """Each Mongo target in turn: the SecantusDB fixture, then ``$FEDGRPC_TEST_MONGO_URI``."""
    if request.param == "external":
        return os.environ[EXTERNAL_MONGO_ENV]
    uri: str = request.getfixturevalue("secantus_uri")
    return uri


@pytest.fixture
def mongo_client(mongo_uri: str) -> Iterator[pymongo.MongoClient[dict[str, object]]]:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        mongo_uri, serverSelectionTimeoutMS=10_000, tz_aware=True
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def mongo_database(
    mongo_client: pymongo.MongoClient[dict[str, object]],
) -> Iterator[Database[dict[str, object]]]:
    """A fresh, uniquely named database, dropped afterwards, so tests never see each other."""
    name = f"fedgrpc_test_{uuid.uuid4().hex[:12]}"
    try:
        yield mongo_client[name]
    finally:
        mongo_client.drop_database(name)


# --- a visible per-backend tally of the statestore contract suite -------------------------

_CONTRACT_TALLY: dict[str, dict[str, int]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/statestore/" not in report.nodeid or "[" not in report.nodeid:
        return
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    backend = report.nodeid.rsplit("[", 1)[1].split("-")[0:2]
    name = "sqlite" if backend[0] == "sqlite" else "-".join(backend).rstrip("]")
    counts = _CONTRACT_TALLY.setdefault(name, {})
    counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _CONTRACT_TALLY:
        return
    terminalreporter.section("statestore contract suite per backend")
    for backend, counts in sorted(_CONTRACT_TALLY.items()):
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        terminalreporter.write_line(f"{backend}: {summary}")
