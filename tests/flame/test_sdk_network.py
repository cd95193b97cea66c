"""The SDK through the real hub: a controller, two combiners and three real clients, with real
analysis processes (tests/flame/network_analyses.py) talking through the broker.

agg and n2 sit on combiner c1, n1 on c2, so n1's messages cross combiners through the
controller. One analysis covers messages both ways, send_message_and_wait_for_responses with
timeout=None, sealed intermediate data sent and awaited, global data read twice, a delivery
whose ack is dropped (the controller delivers again; the receiver sees it once), a message to
a node that is offline delivered after its client restarts, a local-DP final result and logs.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fedgrpc.client.node import Client
from fedgrpc.config import ControllerConfig
from fedgrpc.controller.app import Controller
from fedgrpc.proto.control.v1 import control_pb2
from fedgrpc.transfer import dict_to_struct
from tests.flame.network_analyses import VALUES
from tests.integration.conftest import FAST, LocalNetwork, eventually

pytestmark = pytest.mark.timeout(120)

REPO = str(Path(__file__).resolve().parents[2])
PLACES = {"agg": "c1", "n1": "c2", "n2": "c1"}
TERMINAL = ("executed", "failed", "stopped")


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[LocalNetwork]:
    config = ControllerConfig(
        port=0,
        data_dir=tmp_path / "controller",
        message_retry_seconds=0.3,
        analysis_node_grace_seconds=30.0,
        **FAST,
    )
    controller = Controller(config)
    await controller.start()
    local = LocalNetwork(data_dir=tmp_path, controller=controller)
    try:
        for combiner in ("c1", "c2"):
            await local.add_combiner(combiner)
        for name in PLACES:
            await add_node(local, name)
        yield local
    finally:
        await local.close()


async def add_node(network: LocalNetwork, name: str) -> Client:
    client = await network.add_client(
        name,
        None,
        preferred_combiner=PLACES[name],
        analysis_python_path=(REPO,),
        analysis_stop_grace=1.0,
    )
    assert client.combiner_name == PLACES[name]
    await network.controller.writer.flush()  # its record (with its public key) is written
    return client


def client(network: LocalNetwork, name: str) -> Client:
    return next(c for c in network.clients if c.name == name)


async def analysis(network: LocalNetwork, analysis_id: str) -> control_pb2.Analysis:
    request = control_pb2.GetAnalysisRequest(analysis_id=analysis_id)
    found: control_pb2.Analysis = await network.control.GetAnalysis(request)
    return found


async def node_status(network: LocalNetwork, analysis_id: str, node: str, wanted: str) -> None:
    async def reached() -> bool:
        current = await analysis(network, analysis_id)
        if current.status in TERMINAL and current.status != wanted:
            raise AssertionError(f"analysis ended {current.status}: {current.message}")
        return any(n.node_id == node and n.status == wanted for n in current.nodes)

    await eventually(reached, timeout=60, what=f"{node} {wanted}")


async def ended(network: LocalNetwork, analysis_id: str) -> control_pb2.Analysis:
    async def probe() -> control_pb2.Analysis | None:
        current = await analysis(network, analysis_id)
        return current if current.status in TERMINAL else None

    result: control_pb2.Analysis = await eventually(probe, timeout=60, what="analysis end")
    return result


async def signal_offline(path: Path) -> None:
    """Tell the aggregator's process (reading the FIFO) that n2 is gone. Opening without
    blocking fails until a reader is there, so a process that died never hangs the test."""

    def opened() -> int | None:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            return None

    fd = await eventually(opened, timeout=60, what="the aggregator to open the signal FIFO")
    try:
        os.write(fd, b"n2 offline\n")
    finally:
        os.close(fd)


async def test_sdk_through_the_real_broker(network: LocalNetwork, tmp_path: Path) -> None:
    fifo = tmp_path / "offline-signal"
    os.mkfifo(fifo)
    n1, n2_before = client(network, "n1"), client(network, "n2")
    n1.analyses.test_drop_acks = 1  # n1's first message is agg's ping: its ack gets lost
    started = await network.control.StartAnalysis(
        control_pb2.StartAnalysisRequest(
            analysis_id="sdk-net",
            entrypoint="tests.flame.network_analyses:main",
            nodes=list(PLACES),
            aggregator="agg",
            settings=dict_to_struct({"offline_signal": str(fifo)}),
        )
    )
    assert started.status == "starting"

    # n2 did its part; stop its client, tell agg (which then messages n2), restart n2.
    await node_status(network, "sdk-net", "n2", "executed")
    key_before = n2_before.analyses.public_key
    await network.stop_client("n2")
    await signal_offline(fifo)
    n2_after = await add_node(network, "n2")
    assert n2_after.analyses.public_key == key_before  # same data dir, same keys

    final = await ended(network, "sdk-net")
    assert final.status == "executed", final.message
    late = n2_after.analyses.inbox("sdk-net").select("unread")
    assert [(m.sender, m.category) for m in late] == [("agg", "late")]

    # The dropped ack: the controller delivered the ping again; n1 stored and showed it once.
    assert n1.analyses.test_drop_acks == 0
    pings = [m for m in n1.analyses.inbox("sdk-net").select("all") if m.category == "ping"]
    assert len(pings) == 1

    await check_result_and_logs(network)


async def check_result_and_logs(network: LocalNetwork) -> None:
    download = control_pb2.DownloadAnalysisResultRequest(analysis_id="sdk-net")
    result = await network.control.DownloadAnalysisResult(download)
    values = [v for share in VALUES.values() for v in share]
    exact = sum(values) / len(values)
    noised = float(result.data.decode())
    assert result.info.content_type.startswith("text/plain")
    assert noised != exact
    assert abs(noised - exact) < 30  # Laplace with scale 1: P(|noise| >= 30) = e**-30
    logs = await network.control.GetAnalysisLogs(
        control_pb2.GetAnalysisLogsRequest(analysis_id="sdk-net")
    )
    lines = [(e.node_id, e.log_type, e.message) for e in logs.logs]

    def logged(node: str, text: str) -> bool:  # messages carry FLAME's "[flame -- INFO: ...]"
        return any(n == node and t == "info" and m.endswith(text) for n, t, m in lines)

    assert logged("n1", "n1 sent its share")
    assert logged("n2", "n2 sent its share")
    assert logged("agg", f"exact mean {exact}")
    assert logged("agg", "n2 acknowledged the late message")


async def test_a_node_restarted_mid_analysis_fails_it_instead_of_leaving_it_running(
    network: LocalNetwork,
) -> None:
    # Its analysis process died with the daemon; back within the grace, the node says so.
    await network.control.StartAnalysis(
        control_pb2.StartAnalysisRequest(
            analysis_id="lost",
            entrypoint="tests.flame.sample_analyses:hang",
            nodes=list(PLACES),
            aggregator="agg",
        )
    )
    await node_status(network, "lost", "n1", "executing")
    await network.stop_client("n1")
    await add_node(network, "n1")
    final = await ended(network, "lost")
    assert final.status == "failed"
    assert final.message.startswith("node n1 failed: the node restarted"), final.message
    statuses = {n.node_id: n.status for n in final.nodes}
    assert statuses["n1"] == "failed"

    async def others_stopped() -> bool:  # told to stop by the controller, and did
        nodes = (await analysis(network, "lost")).nodes
        return all(n.status == "stopped" for n in nodes if n.node_id != "n1")

    await eventually(others_stopped, timeout=30, what="agg and n2 stopped")
