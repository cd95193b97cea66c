"""The analysis lifecycle and the storage service over real gRPC, with raw-stream nodes."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedgrpc.proto.control.v1 import control_pb2, control_pb2_grpc
from fedgrpc.proto.messaging.v1 import messaging_pb2 as mpb
from fedgrpc.rpc.channel import open_channel
from fedgrpc.security.tokens import Role
from tests.flame.fake_nodes import (
    FakeNode,
    add_node,
    admin_storage,
    node_offline,
    running_network,
)
from tests.integration.conftest import LocalNetwork, eventually


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[LocalNetwork]:
    async with running_network(tmp_path) as local:  # nodes fail after 1 s offline
        yield local


@pytest.fixture
async def nodes(network: LocalNetwork) -> list[FakeNode]:
    return [
        await add_node(network, name, index % 2) for index, name in enumerate(("n1", "n2", "agg"))
    ]


async def start(network: LocalNetwork, **fields: Any) -> control_pb2.Analysis:
    request = {"entrypoint": "m:f", "nodes": ["n1", "n2", "agg"], "aggregator": "agg", **fields}
    analysis: control_pb2.Analysis = await network.control.StartAnalysis(
        control_pb2.StartAnalysisRequest(**request)
    )
    return analysis


async def status(network: LocalNetwork, analysis_id: str) -> control_pb2.Analysis:
    request = control_pb2.GetAnalysisRequest(analysis_id=analysis_id)
    analysis: control_pb2.Analysis = await network.control.GetAnalysis(request)
    return analysis


async def settled(network: LocalNetwork, node: FakeNode, analysis_id: str) -> None:
    """Wait until the controller has applied everything ``node`` reported so far.

    A node's reports travel in order on one stream and are applied in order, so once a marker
    log line sent after them is stored, they have been applied too.
    """
    marker = uuid.uuid4().hex
    node.report(analysis_id, logs=[mpb.LogEntry(log_type="debug", message=marker)])
    logs = network.controller.store.analysis_logs

    def stored() -> bool:
        return any(line["message"] == marker for line in logs.for_analysis(analysis_id))

    await eventually(stored, what="the node's reports applied")


async def reaches(network: LocalNetwork, analysis_id: str, wanted: str) -> control_pb2.Analysis:
    async def probe() -> control_pb2.Analysis | None:
        analysis = await status(network, analysis_id)
        return analysis if analysis.status == wanted else None

    result: control_pb2.Analysis = await eventually(probe, what=f"analysis {wanted}")
    return result


async def test_tasks_reach_every_node_and_status_aggregates_to_executed(
    network: LocalNetwork, nodes: list[FakeNode]
) -> None:
    analysis = await start(network, project_id="p", settings={"bins": 4}, analysis_id="an")
    assert (analysis.analysis_id, analysis.status) == ("an", "starting")
    await eventually(lambda: all(node.tasks for node in nodes), what="tasks")
    task = nodes[2].tasks[0]
    assert (task.node_id, task.role, task.project_id, task.entrypoint) == (
        "agg",
        "aggregator",
        "p",
        "m:f",
    )
    assert task.settings["bins"] == 4
    keys = {p.node_id: (p.role, p.public_key) for p in task.participants}
    assert keys == {
        n.name: (("aggregator" if n.name == "agg" else "default"), n.public_key) for n in nodes
    }

    for node in nodes:
        node.report("an", "started")
    await reaches(network, "an", "started")
    nodes[0].report("an", "executing", 40)
    nodes[0].report("an", "", 20)  # progress never goes back
    await settled(network, nodes[0], "an")
    current = await status(network, "an")
    assert current.status == "started"  # the least advanced node decides
    assert current.nodes[0].progress == 40
    for node in nodes:
        node.report("an", "executed")
    done = await reaches(network, "an", "executed")
    assert [n.progress for n in done.nodes] == [100, 100, 100]
    assert done.finished_at
    nodes[1].report("an", "failed", message="too late")
    await settled(network, nodes[1], "an")
    assert (await status(network, "an")).status == "executed"  # terminal states are final


async def test_a_failed_node_fails_the_analysis_and_stops_the_others(
    network: LocalNetwork, nodes: list[FakeNode]
) -> None:
    analysis_id = (await start(network)).analysis_id
    nodes[0].report(analysis_id, "failed", message="ZeroDivisionError")
    failed = await reaches(network, analysis_id, "failed")
    assert "n1 failed: ZeroDivisionError" in failed.message
    await eventually(lambda: nodes[1].stops and nodes[2].stops, what="stops")
    assert nodes[0].stops == []


async def test_a_node_that_goes_offline_fails_the_analysis_within_the_grace(
    network: LocalNetwork, nodes: list[FakeNode]
) -> None:
    analysis_id = (await start(network)).analysis_id
    await node_offline(network, nodes[1])
    failed = await reaches(network, analysis_id, "failed")
    assert "n2 failed: node went offline" in failed.message


async def test_a_node_back_within_the_grace_keeps_the_analysis_and_gets_its_task(
    network: LocalNetwork, nodes: list[FakeNode]
) -> None:
    analysis_id = (await start(network)).analysis_id
    await node_offline(network, nodes[1])
    back = await add_node(network, "n2", 0)
    await eventually(lambda: back.tasks, what="the start task again")
    assert "n2" not in network.controller.analyses._offline  # its grace timer is cancelled
    assert (await status(network, analysis_id)).status == "starting"


async def test_stop_ends_as_stopped_and_only_once(
    network: LocalNetwork, nodes: list[FakeNode]
) -> None:
    analysis_id = (await start(network)).analysis_id
    stopped = await network.control.StopAnalysis(
        control_pb2.StopAnalysisRequest(analysis_id=analysis_id)
    )
    assert (stopped.status, stopped.message) == ("stopped", "stopped by the user")
    await eventually(lambda: all(node.stops for node in nodes), what="stop on every node")
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await network.control.StopAnalysis(control_pb2.StopAnalysisRequest(analysis_id=analysis_id))
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    nodes[0].report(analysis_id, "stopped")
    await settled(network, nodes[0], analysis_id)
    final = await status(network, analysis_id)
    assert (final.status, final.nodes[0].status) == ("stopped", "stopped")


async def test_an_analysis_past_its_timeout_fails(
    network: LocalNetwork, nodes: list[FakeNode]
) -> None:
    analysis_id = (await start(network, timeout_seconds=0.5)).analysis_id
    failed = await reaches(network, analysis_id, "failed")
    assert failed.message == "timed out"


async def test_bad_starts_are_refused_with_their_codes(
    network: LocalNetwork, nodes: list[FakeNode]
) -> None:
    await node_offline(network, nodes[1])
    cases = [
        ({"nodes": ["n1", "ghost"], "aggregator": "n1"}, grpc.StatusCode.NOT_FOUND),
        ({"nodes": ["n1", "n2"], "aggregator": "n1"}, grpc.StatusCode.FAILED_PRECONDITION),
        ({"nodes": ["n1"], "aggregator": "agg"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"nodes": [], "aggregator": "agg"}, grpc.StatusCode.INVALID_ARGUMENT),
        (
            {"nodes": ["n1"], "aggregator": "n1", "entrypoint": "nocolon"},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ({"nodes": ["n1"], "aggregator": "n1", "package_id": "nope"}, grpc.StatusCode.NOT_FOUND),
    ]
    for fields, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await start(network, **fields)
        assert refused.value.code() == code, fields
    await start(network, nodes=["n1"], aggregator="n1", analysis_id="dup")
    with pytest.raises(grpc.aio.AioRpcError) as duplicate:
        await start(network, nodes=["n1"], aggregator="n1", analysis_id="dup")
    assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_logs_are_kept_in_order_and_filtered(
    network: LocalNetwork, nodes: list[FakeNode]
) -> None:
    analysis_id = (await start(network)).analysis_id
    lines = [mpb.LogEntry(log_type="info", message=f"line {i}") for i in range(3)]
    nodes[0].report(analysis_id, logs=lines[:2])
    nodes[1].report(analysis_id, logs=[mpb.LogEntry(log_type="warning", message="careful")])
    nodes[0].report(analysis_id, logs=lines[2:])
    logs = network.controller.store.analysis_logs
    await eventually(lambda: logs.count(analysis_id=analysis_id) == 4, what="4 log lines")
    request = control_pb2.GetAnalysisLogsRequest
    every = await network.control.GetAnalysisLogs(request(analysis_id=analysis_id))
    # Oldest first; n1 and n2 sit on different combiners, so only each node's order is fixed.
    assert sorted((e.node_id, e.message) for e in every.logs) == [
        ("n1", "line 0"),
        ("n1", "line 1"),
        ("n1", "line 2"),
        ("n2", "careful"),
    ]
    assert [e.message for e in every.logs if e.node_id == "n1"] == ["line 0", "line 1", "line 2"]
    assert all(e.created_at.seconds > 0 for e in every.logs)
    warnings = await network.control.GetAnalysisLogs(
        request(analysis_id=analysis_id, log_type="warning")
    )
    assert [e.message for e in warnings.logs] == ["careful"]
    mine = await network.control.GetAnalysisLogs(request(analysis_id=analysis_id, node_id="n2"))
    assert len(mine.logs) == 1


async def test_storage_is_for_the_analysis_nodes_and_results_for_the_aggregator(
    network: LocalNetwork, nodes: list[FakeNode]
) -> None:
    await add_node(network, "outsider", 1)
    analysis_id = (await start(network)).analysis_id
    storage = admin_storage(network)
    put = mpb.PutObjectRequest
    stored = await storage.PutObject(
        put(analysis_id=analysis_id, node_id="n1", tag="sums", data=b"sealed", recipients=["agg"])
    )
    assert (stored.sender, stored.kind, stored.size) == ("n1", "intermediate", 6)
    for _ in range(2):  # readable any number of times (FLAME's read-once bug is not here)
        got = await storage.GetObject(
            mpb.GetObjectRequest(analysis_id=analysis_id, node_id="agg", id=stored.id)
        )
        assert got.data == b"sealed"
    listed = await storage.ListObjects(
        mpb.ListObjectsRequest(analysis_id=analysis_id, node_id="n2", tag="sums")
    )
    assert [o.id for o in listed.objects] == [stored.id]

    async def code_of(call: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        code: grpc.StatusCode = refused.value.code()
        return code

    denied = grpc.StatusCode.PERMISSION_DENIED
    assert (
        await code_of(
            storage.PutObject(put(analysis_id=analysis_id, node_id="outsider", data=b"x"))
        )
        == denied
    )
    assert (
        await code_of(
            storage.GetObject(
                mpb.GetObjectRequest(analysis_id=analysis_id, node_id="outsider", id=stored.id)
            )
        )
        == denied
    )
    assert (
        await code_of(
            storage.GetObject(
                mpb.GetObjectRequest(analysis_id=analysis_id, node_id="n1", id="nope")
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        await code_of(storage.PutObject(put(analysis_id="nope", node_id="n1", data=b"x")))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        await code_of(
            storage.PutObject(
                put(analysis_id=analysis_id, node_id="n1", data=b"x", sha256="0" * 64)
            )
        )
        == grpc.StatusCode.DATA_LOSS
    )

    submit = mpb.SubmitResultRequest
    assert (
        await code_of(
            storage.SubmitResult(submit(analysis_id=analysis_id, node_id="n1", data=b"r"))
        )
        == denied
    )
    download = control_pb2.DownloadAnalysisResultRequest(analysis_id=analysis_id)
    assert (
        await code_of(network.control.DownloadAnalysisResult(download)) == grpc.StatusCode.NOT_FOUND
    )
    result = await storage.SubmitResult(
        submit(
            analysis_id=analysis_id,
            node_id="agg",
            data=b"42.0",
            content_type="text/plain",
            sha256=hashlib.sha256(b"42.0").hexdigest(),
        )
    )
    assert result.kind == "result"
    downloaded = await network.control.DownloadAnalysisResult(download)
    assert (downloaded.data, downloaded.info.content_type) == (b"42.0", "text/plain")
    assert (await status(network, analysis_id)).result_id == result.id
    await network.control.StopAnalysis(control_pb2.StopAnalysisRequest(analysis_id=analysis_id))
    ended = storage.SubmitResult(submit(analysis_id=analysis_id, node_id="agg", data=b"late"))
    assert await code_of(ended) == grpc.StatusCode.FAILED_PRECONDITION
    assert (await network.control.DownloadAnalysisResult(download)).data == b"42.0"


async def test_a_node_proposes_the_object_id_and_reads_back_sender_and_content_type(
    network: LocalNetwork, nodes: list[FakeNode]
) -> None:
    analysis_id = (await start(network)).analysis_id
    storage = admin_storage(network)
    proposed = uuid.uuid4().hex
    request = mpb.PutObjectRequest(
        analysis_id=analysis_id,
        node_id="n1",
        id=proposed,
        content_type="sealed+application/json",
        data=b"ciphertext",
        recipients=["agg"],
    )
    stored = await storage.PutObject(request)
    assert stored.id == proposed
    got = await storage.GetObject(
        mpb.GetObjectRequest(analysis_id=analysis_id, node_id="agg", id=proposed)
    )
    # The reader opens with the sender's key and decodes by the content type as stored.
    assert (got.info.sender, got.info.content_type) == ("n1", "sealed+application/json")
    assert list(got.info.recipients) == ["agg"]
    listed = await storage.ListObjects(
        mpb.ListObjectsRequest(analysis_id=analysis_id, node_id="agg")
    )
    assert [(o.id, o.sender, o.content_type) for o in listed.objects] == [
        (proposed, "n1", "sealed+application/json")
    ]
    for bad_id, code in [
        (proposed, grpc.StatusCode.ALREADY_EXISTS),
        ("../escape", grpc.StatusCode.INVALID_ARGUMENT),
        ("x" * 129, grpc.StatusCode.INVALID_ARGUMENT),
        ("has space", grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        request.id = bad_id
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await storage.PutObject(request)
        assert refused.value.code() == code, bad_id
    # The refused duplicate left the first object as it was.
    again = await storage.GetObject(
        mpb.GetObjectRequest(analysis_id=analysis_id, node_id="n1", id=proposed)
    )
    assert again.data == b"ciphertext"


async def test_any_log_type_is_kept(network: LocalNetwork, nodes: list[FakeNode]) -> None:
    analysis_id = (await start(network)).analysis_id
    types = ["stderr", "my-custom-type", "critical-error"]
    nodes[0].report(analysis_id, logs=[mpb.LogEntry(log_type=t, message=t) for t in types])
    await settled(network, nodes[0], analysis_id)
    request = control_pb2.GetAnalysisLogsRequest(analysis_id=analysis_id, node_id="n1")
    logs = (await network.control.GetAnalysisLogs(request)).logs
    assert [e.log_type for e in logs if e.message in types] == types


async def test_a_node_token_may_only_name_its_own_node(
    network: LocalNetwork, nodes: list[FakeNode]
) -> None:
    analysis_id = (await start(network)).analysis_id
    n1 = next(node for node in nodes if node.name == "n1")
    storage = n1.storage(network.controller.address)
    as_agg = mpb.PutObjectRequest(analysis_id=analysis_id, node_id="agg", data=b"forged")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await storage.PutObject(as_agg)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "subject" in (refused.value.details() or "")
    result = mpb.SubmitResultRequest(analysis_id=analysis_id, node_id="agg", data=b"forged")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await storage.SubmitResult(result)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = admin_storage(network)
    listed = await admin.ListObjects(mpb.ListObjectsRequest(analysis_id=analysis_id, node_id="agg"))
    assert list(listed.objects) == []
    # Under its own name the same token works.
    own = mpb.PutObjectRequest(analysis_id=analysis_id, node_id="n1", data=b"mine")
    assert (await storage.PutObject(own)).sender == "n1"


async def test_a_scoped_user_sees_and_starts_analyses_only_in_its_project(
    network: LocalNetwork, nodes: list[FakeNode]
) -> None:
    other = await start(network, project_id="proj-b")
    token = network.token(Role.USER, "alice", scope="proj-a")
    channel = open_channel(network.controller.address, max_message_size=1 << 20, token=token)
    alice = control_pb2_grpc.ControlServiceStub(channel)
    try:
        for call in (
            alice.GetAnalysis(control_pb2.GetAnalysisRequest(analysis_id=other.analysis_id)),
            alice.GetAnalysisLogs(
                control_pb2.GetAnalysisLogsRequest(analysis_id=other.analysis_id)
            ),
            alice.StopAnalysis(control_pb2.StopAnalysisRequest(analysis_id=other.analysis_id)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as hidden:
                await call
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        request: dict[str, Any] = {"entrypoint": "m:f", "nodes": ["n1", "agg"], "aggregator": "agg"}
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await alice.StartAnalysis(
                control_pb2.StartAnalysisRequest(project_id="proj-b", **request)
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        mine = await alice.StartAnalysis(control_pb2.StartAnalysisRequest(**request))
        assert mine.project_id == "proj-a"
        listed = await alice.ListAnalyses(control_pb2.ListAnalysesRequest())
        assert [a.analysis_id for a in listed.result] == [mine.analysis_id]
        everything = await network.control.ListAnalyses(control_pb2.ListAnalysesRequest())
        assert {a.analysis_id for a in everything.result} == {
            mine.analysis_id,
            other.analysis_id,
        }
        assert (await status(network, other.analysis_id)).status != "stopped"
    finally:
        await channel.close()


async def test_a_stop_missed_while_offline_is_sent_again_when_the_node_returns(
    network: LocalNetwork, nodes: list[FakeNode]
) -> None:
    analysis_id = (await start(network)).analysis_id
    await eventually(lambda: all(node.tasks for node in nodes), what="tasks")
    n1 = nodes[0]
    await node_offline(network, n1)  # the stop below cannot reach it
    await network.control.StopAnalysis(control_pb2.StopAnalysisRequest(analysis_id=analysis_id))
    assert not n1.stops
    back = await add_node(network, "n1", 0)
    await eventually(lambda: back.stops, what="the missed stop after the node came back")
    assert [stop.analysis_id for stop in back.stops] == [analysis_id]
    back.report(analysis_id, "stopped")
    await settled(network, back, analysis_id)
    node = next(n for n in (await status(network, analysis_id)).nodes if n.node_id == "n1")
    assert node.status == "stopped"
    # Confirmed: a later reconnect gets no stop again.
    await node_offline(network, back)
    again = await add_node(network, "n1", 0)
    # Its reconnect is handled before this marker (one ordered link), so a re-sent stop
    # would have been routed by now.
    await settled(network, again, analysis_id)
    assert not again.stops
    await again.close()
