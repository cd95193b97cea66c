"""The ``store`` fixture: every contract test runs on SQLite and on each Mongo target.

Test ids read ``test_x[sqlite]``, ``test_x[mongo-secantus]`` and, when
``$FEDGRPC_TEST_MONGO_URI`` is set, ``test_x[mongo-external]``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedgrpc.statestore import StateStore, open_mongo_statestore, open_statestore
from tests.conftest import EXTERNAL_MONGO_ENV, MONGO_TARGETS

STORE_TARGETS = ["sqlite", *(f"mongo-{target}" for target in MONGO_TARGETS)]


@pytest.fixture(params=STORE_TARGETS)
def store_target(request: pytest.FixtureRequest) -> str:
    target: str = request.param
    return target


@pytest.fixture
def mongo_uri(store_target: str, request: pytest.FixtureRequest) -> str:
    """Overrides the parametrized ``mongo_uri`` of tests/conftest.py for this package.

    The Mongo target is chosen by ``store_target`` instead, so SQLite runs start no Mongo
    server and every test has exactly one id per backend. ``mongo_database`` (the fresh,
    dropped-afterwards database from tests/conftest.py) is built on this.
    """
    if store_target == "mongo-external":
        return os.environ[EXTERNAL_MONGO_ENV]
    uri: str = request.getfixturevalue("secantus_uri")
    return uri


@pytest.fixture
def store(
    store_target: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[StateStore]:
    if store_target == "sqlite":
        opened = open_statestore(data_dir=tmp_path / "state")
    else:
        opened = open_mongo_statestore(request.getfixturevalue("mongo_database"))
    with opened:
        yield opened
