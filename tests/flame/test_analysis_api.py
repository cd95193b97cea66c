"""The API client's analysis helpers and ``fedgrpc analysis ...`` against a real controller."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from fedgrpc.api import APIClient
from fedgrpc.cli.root import main
from fedgrpc.errors import DeadlineExceeded, FailedPrecondition, NotFound
from fedgrpc.proto.messaging.v1 import messaging_pb2 as mpb
from tests.flame.fake_nodes import FakeNode, add_node, running_network
from tests.integration.conftest import LocalNetwork, eventually


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[LocalNetwork]:
    async with running_network(tmp_path) as local:
        yield local


@pytest.fixture
async def nodes(network: LocalNetwork) -> list[FakeNode]:
    return [await add_node(network, "n1", 0), await add_node(network, "agg", 1)]


async def cli(network: LocalNetwork, *args: str) -> Result:
    command = [*args, "--controller", network.controller.address, "--token", network.admin_token]
    return await asyncio.to_thread(CliRunner().invoke, main, command)


async def finish(network: LocalNetwork, nodes: list[FakeNode], analysis_id: str) -> None:
    """The nodes log, the aggregator submits a result, everyone executes."""
    await eventually(lambda: all(node.tasks for node in nodes), what="tasks")
    nodes[0].report(analysis_id, logs=[mpb.LogEntry(log_type="info", message="local mean 2.5")])
    storage = nodes[1].storage(network.controller.address)
    request = mpb.SubmitResultRequest(
        analysis_id=analysis_id, node_id="agg", data=b'{"mean": 2.5}', content_type="text/plain"
    )
    await storage.SubmitResult(request)
    for node in nodes:
        node.report(analysis_id, "executed")


async def test_api_client_runs_follows_and_downloads(
    network: LocalNetwork, nodes: list[FakeNode], tmp_path: Path
) -> None:
    api = APIClient(network.controller.address, token=network.admin_token)

    def call(method: str, *args: Any, **kwargs: Any) -> Any:
        return asyncio.to_thread(getattr(api, method), *args, **kwargs)

    try:
        started = await call(
            "start_analysis",
            "stats:main",
            ["n1", "agg"],
            "agg",
            project_id="proj",
            analysis_id="a1",
            settings={"column": "age"},
            timeout=60,
        )
        assert (started["analysis_id"], started["status"]) == ("a1", "starting")
        assert [(n["node_id"], n["role"]) for n in started["nodes"]] == [
            ("n1", "default"),
            ("agg", "aggregator"),
        ]
        with pytest.raises(DeadlineExceeded):
            await call("wait_for_analysis", "a1", timeout=0.3)
        with pytest.raises(NotFound):
            await call("download_analysis_result", "a1")
        await finish(network, nodes, "a1")
        done = await call("wait_for_analysis", "a1", timeout=20)
        assert done["status"] == "executed"
        assert done["result_id"]
        target = tmp_path / "result.json"
        assert await call("download_analysis_result", "a1", target) == b'{"mean": 2.5}'
        assert json.loads(target.read_text()) == {"mean": 2.5}
        info = await call("get_analysis_result_info", "a1")
        assert (info["content_type"], info["sender"], info["kind"]) == (
            "text/plain",
            "agg",
            "result",
        )
        assert [line["message"] for line in await call("get_analysis_logs", "a1")] == [
            "local mean 2.5"
        ]
        listed = await call("list_analyses", project_id="proj")
        assert [a["analysis_id"] for a in listed["result"]] == ["a1"]
        assert (await call("list_analyses", status="failed"))["count"] == 0
        with pytest.raises(FailedPrecondition):
            await call("stop_analysis", "a1")
    finally:
        api.close()


async def test_cli_commands(network: LocalNetwork, nodes: list[FakeNode], tmp_path: Path) -> None:
    result = await cli(
        network,
        "analysis",
        "start",
        "stats:main",
        "--node",
        "n1",
        "--node",
        "agg",
        "--aggregator",
        "agg",
        "--id",
        "c1",
        "--settings",
        '{"bins": 3}',
    )
    assert result.exit_code == 0, result.output
    assert "analysis c1 started" in result.output
    await finish(network, nodes, "c1")
    await eventually(
        lambda: network.controller.store.analyses.get("c1")["status"] == "executed",
        what="executed",
    )
    shown = await cli(network, "analysis", "get", "c1")
    assert "executed" in shown.output
    assert "aggregator" in shown.output
    as_json = json.loads((await cli(network, "analysis", "get", "c1", "--json")).output)
    assert as_json["nodes"][1]["progress"] == 100
    listing = await cli(network, "analysis", "list")
    assert "c1" in listing.output
    logs = await cli(network, "analysis", "logs", "c1", "--node", "n1")
    assert "local mean 2.5" in logs.output
    out = tmp_path / "r.json"
    saved = await cli(network, "analysis", "results", "c1", "-o", str(out))
    assert saved.exit_code == 0, saved.output
    assert out.read_bytes() == b'{"mean": 2.5}'
    printed = await cli(network, "analysis", "results", "c1")
    assert printed.stdout_bytes == b'{"mean": 2.5}'

    again = await cli(network, "analysis", "stop", "c1")
    assert again.exit_code != 0
    assert "has ended" in again.output
    missing = await cli(network, "analysis", "get", "nope")
    assert missing.exit_code != 0
    assert len(missing.output.strip().splitlines()) == 1  # one readable line, no traceback
    bad = await cli(network, "analysis", "start", "m:f", "--node", "n1", "--aggregator", "zz")
    assert bad.exit_code != 0
    assert "aggregator" in bad.output

    running = await cli(
        network, "analysis", "start", "m:f", "--node", "n1", "--aggregator", "n1", "--id", "s1"
    )
    assert running.exit_code == 0, running.output
    stopped = await cli(network, "analysis", "stop", "s1", "--json")
    assert json.loads(stopped.output)["status"] == "stopped"
