"""Fixtures for the end-to-end tests: clusters of daemon subprocesses, stopped afterwards."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Cluster

_FAILED_KEY = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember failures on the test and on its module (for module-scoped clusters)."""
    report = yield
    if report.failed:
        node: pytest.Item | pytest.Collector | None = item
        while node is not None and not isinstance(node, pytest.Session):
            node.stash[_FAILED_KEY] = True
            node = node.parent
    return report


def _stop(cluster: Cluster, request: pytest.FixtureRequest) -> None:
    """Stop every daemon; when a test using them failed, print each one's stderr tail."""
    cluster.stop_all()
    if request.node.stash.get(_FAILED_KEY, False):
        print(f"\nDaemon logs (full files in {cluster.log_dir}):\n{cluster.report(60)}")


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """Daemons for one test, in its own tmp dir; SIGTERM (then SIGKILL) afterwards."""
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        _stop(cluster, request)


@pytest.fixture(scope="module")
def module_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Daemons shared by the tests of one module (one expensive scenario, several checks)."""
    cluster = Cluster(tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]))
    try:
        yield cluster
    finally:
        _stop(cluster, request)
