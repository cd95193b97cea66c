"""The node service and analysis processes: auth, lifecycle, stop, failure, orphan exit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedgrpc.client.analysis import LOG_FLUSH_SECONDS
from fedgrpc.flame.dp import apply_local_dp
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.messaging.v1 import messaging_pb2, node_pb2, node_pb2_grpc
from tests.flame.node_harness import Nodes, make_nodes, make_task

REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async for made in make_nodes(tmp_path, ("agg", "n1"), analysis_python_path=(REPO,)):
        yield made


async def until_status(nodes: Nodes, node: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while status not in nodes.broker.statuses(node):
        left = deadline - time.monotonic()
        assert left > 0, f"{node} never reached {status}: {nodes.broker.statuses(node)}"
        nodes.broker.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(nodes.broker.changed.wait(), left)


def start(nodes: Nodes, node: str, entrypoint: str, **fields: float) -> None:
    task = make_task(node, nodes.hosts, entrypoint=entrypoint)
    for key, value in fields.items():
        setattr(task, key, value)
    nodes.hosts[node].handle(combiner_pb2.ServerMessage(start_analysis=task))


NODE_METHODS = [
    f"/{node_pb2.DESCRIPTOR.services_by_name['NodeService'].full_name}/{m.name}"
    for m in node_pb2.DESCRIPTOR.services_by_name["NodeService"].methods
]


async def test_calls_need_the_analysis_secret(nodes: Nodes) -> None:
    # NodeService is outside the token table (fedgrpc.security.authz.LOCAL_SERVICES): the
    # analysis secret is its only credential, so every method refuses a call without it.
    address, state = await nodes.attach_analysis("n1")
    refused = {"no secret": (), "wrong secret": (("x-fedgrpc-analysis-secret", "guess"),)}
    async with grpc.aio.insecure_channel(address) as channel:
        for method in NODE_METHODS:
            call = channel.unary_unary(method)
            for case, metadata in refused.items():
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call(b"", metadata=metadata, timeout=10)
                assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method, case)
        stub = node_pb2_grpc.NodeServiceStub(channel)
        context = await stub.GetContext(
            node_pb2.GetContextRequest(), metadata=(("x-fedgrpc-analysis-secret", state.secret),)
        )
        assert context.node_id == "n1"


async def test_analysis_runs_to_executed_with_progress_and_logs(nodes: Nodes) -> None:
    start(nodes, "n1", "tests.flame.sample_analyses:succeed")
    await until_status(nodes, "n1", "executed")
    assert nodes.broker.statuses("n1") == ["started", "executing", "executed"]
    assert any(u.progress == 50 for n, u in nodes.broker.updates if n == "n1")
    assert any("hello from n1" in e.message for e in nodes.broker.logs("n1"))


async def test_crash_reports_failed_with_stderr(nodes: Nodes) -> None:
    start(nodes, "n1", "tests.flame.sample_analyses:crash")
    await until_status(nodes, "n1", "failed")
    failed = next(u for n, u in nodes.broker.updates if n == "n1" and u.status == "failed")
    assert "RuntimeError: boom" in failed.message
    assert "about to fail" in failed.message


async def test_error_log_fails_instead_of_sleeping(nodes: Nodes) -> None:
    start(nodes, "n1", "tests.flame.sample_analyses:error_log")
    await until_status(nodes, "n1", "failed", timeout=20)
    assert any("cannot go on" in e.message for e in nodes.broker.logs("n1"))


async def test_stop_terminates_the_process(nodes: Nodes) -> None:
    start(nodes, "n1", "tests.flame.sample_analyses:hang")
    await until_status(nodes, "n1", "executing")
    stop = messaging_pb2.StopAnalysis(analysis_id="a1", node_id="n1", reason="user")
    nodes.hosts["n1"].handle(combiner_pb2.ServerMessage(stop_analysis=stop))
    await until_status(nodes, "n1", "stopped", timeout=10)


async def test_a_repeated_start_of_a_running_analysis_is_ignored(nodes: Nodes) -> None:
    # The controller re-sends start_analysis to a node that reconnects while its status is
    # still "starting"; the node keeps the analysis it runs (one process, one secret).
    host = nodes.hosts["n1"]
    start(nodes, "n1", "tests.flame.sample_analyses:hang")
    start(nodes, "n1", "tests.flame.sample_analyses:hang")  # while the first is starting
    await until_status(nodes, "n1", "executing")
    state = host.analyses["a1"]
    process, secret = state.process, state.secret
    before = set(host._background)
    start(nodes, "n1", "tests.flame.sample_analyses:hang")  # while it runs
    await asyncio.wait_for(asyncio.gather(*(set(host._background) - before)), 10)
    assert (host.analyses["a1"].process, host.analyses["a1"].secret) == (process, secret)
    assert host._by_secret == {secret: "a1"}
    assert nodes.broker.statuses("n1") == ["started", "executing"]
    await host.stop("a1", "user")
    await until_status(nodes, "n1", "stopped", timeout=10)


async def test_timeout_fails_the_analysis(nodes: Nodes) -> None:
    start(nodes, "n1", "tests.flame.sample_analyses:hang", timeout=1.0)
    await until_status(nodes, "n1", "failed", timeout=15)
    failed = next(u for n, u in nodes.broker.updates if n == "n1" and u.status == "failed")
    assert "timed out" in failed.message


async def test_bad_entrypoint_fails(nodes: Nodes) -> None:
    start(nodes, "n1", "no_such_module:main")
    await until_status(nodes, "n1", "failed")


async def test_logs_are_batched(nodes: Nodes) -> None:
    _, state = await nodes.attach_analysis("n1")
    for i in range(20):
        state.reporter.log("normal", f"line {i}")
    assert nodes.broker.logs("n1") == []
    deadline = time.monotonic() + 5
    while len(nodes.broker.logs("n1")) < 20:
        assert time.monotonic() < deadline
        nodes.broker.changed.clear()
        await asyncio.wait_for(nodes.broker.changed.wait(), LOG_FLUSH_SECONDS * 4)
    batches = [u for n, u in nodes.broker.updates if n == "n1" and u.logs]
    assert len(batches) == 1


async def test_messages_sent_while_disconnected_leave_on_reconnect(nodes: Nodes) -> None:
    await nodes.attach_analysis("n1")
    await nodes.attach_analysis("agg")
    nodes.broker.disconnect("n1")
    host = nodes.hosts["n1"]
    sending = asyncio.ensure_future(
        host.messenger.send(
            analysis_id="a1",
            receivers=["agg"],
            category="c",
            body=b"{}",
            send_id="s1",
            attempt_timeout=None,
        )
    )
    await asyncio.sleep(0.1)
    assert not sending.done()
    assert nodes.broker.deliveries == []
    nodes.broker.connect(host)
    result = await asyncio.wait_for(sending, 5)
    assert result.acknowledged == ["agg"]


async def test_message_to_an_offline_node_is_received_on_reconnect(nodes: Nodes) -> None:
    await nodes.attach_analysis("n1")
    _, agg = await nodes.attach_analysis("agg")
    nodes.broker.disconnect("agg")
    sending = asyncio.ensure_future(
        nodes.hosts["n1"].messenger.send(
            analysis_id="a1",
            receivers=["agg"],
            category="c",
            body=b"{}",
            send_id="s",
            attempt_timeout=None,
        )
    )
    await asyncio.sleep(0.1)
    assert len(agg.inbox) == 0
    nodes.broker.connect(nodes.hosts["agg"])
    assert (await asyncio.wait_for(sending, 5)).acknowledged == ["agg"]
    assert len(agg.inbox) == 1


def test_runner_exits_when_its_node_dies(tmp_path: Path) -> None:
    """The runner's stdin is the node's pipe: a SIGKILLed parent takes the analysis along."""
    script = textwrap.dedent(
        f"""
        import subprocess, sys, time, os
        child = subprocess.Popen([sys.executable, "-c",
            "import threading, sys; sys.path.insert(0, {REPO!r});"
            "from fedgrpc.flame import runner;"
            "threading.Thread(target=runner._exit_when_node_gone).start();"
            "import time; time.sleep(60)"], stdin=subprocess.PIPE)
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child_pid, signal.SIGKILL)
    raise AssertionError("the runner outlived its node")


def test_local_dp_noise_statistics() -> None:
    rng = np.random.default_rng(7)
    draws = np.array(
        [apply_local_dp(10.0, {"epsilon": 0.5, "sensitivity": 2.0}, rng=rng) for _ in range(20_000)]
    )
    scale = 2.0 / 0.5
    assert abs(draws.mean() - 10.0) < 0.15
    # Laplace: mean absolute deviation = scale, variance = 2 * scale**2.
    assert abs(np.abs(draws - 10.0).mean() - scale) < 0.15
    assert abs(draws.var() - 2 * scale**2) < 2.0
