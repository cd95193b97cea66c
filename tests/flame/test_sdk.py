"""Every FlameCoreSDK method against real node services (in-memory broker and storage)."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from fedgrpc.errors import DecryptionError, InvalidArgument, PermissionDenied
from fedgrpc.flame import FlameCoreSDK
from fedgrpc.flame._logs import FlameLogError
from fedgrpc.flame.message import Message
from tests.flame.node_harness import Nodes, make_nodes

T = TypeVar("T")


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async for made in make_nodes(tmp_path):
        yield made


async def connect(nodes: Nodes, name: str, **kwargs: Any) -> FlameCoreSDK:
    address, state = await nodes.attach_analysis(name)
    return await asyncio.to_thread(
        FlameCoreSDK, True, node_address=address, secret=state.secret, **kwargs
    )


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def sdks(nodes: Nodes) -> tuple[FlameCoreSDK, FlameCoreSDK, FlameCoreSDK]:
    agg, n1, n2 = [await connect(nodes, n) for n in ("agg", "n1", "n2")]
    return agg, n1, n2


async def test_identity(nodes: Nodes) -> None:
    agg, n1, _ = await sdks(nodes)
    assert (n1.get_id(), n1.get_role(), n1.get_analysis_id(), n1.get_project_id()) == (
        "n1",
        "default",
        "a1",
        "p1",
    )
    assert agg.get_role() == "aggregator"
    assert n1.get_aggregator_id() == "agg"
    assert agg.get_aggregator_id() is None
    assert n1.get_participant_ids() == ["agg", "n2"]
    assert {"nodeId": "agg", "nodeType": "aggregator"} in n1.get_participants()
    assert all(p["nodeId"] != "n1" for p in n1.get_participants())
    assert "executing" in nodes.broker.statuses("n1")


async def test_send_await_get_delete_clear(nodes: Nodes) -> None:
    agg, n1, n2 = await sdks(nodes)
    acked, failed = await run(n1.send_message, ["agg"], "stats", {"x": 1})
    assert (acked, failed) == (["agg"], [])
    await run(n2.send_message, ["agg"], "stats", {"x": 2})
    got = await run(agg.await_messages, ["n1", "n2"], "stats", timeout=5)
    assert [m.body for m in got["n1"] or []] == [{"x": 1}]
    message = (got["n2"] or [])[0]
    assert isinstance(message, Message)
    assert message.sender == "n2"
    assert message.status == "read"
    assert message.recipient == "agg"
    assert message.category == "stats"
    assert message.created_at
    assert await run(agg.get_messages, "unread") == []
    assert len(await run(agg.get_messages, "read")) == 2
    assert await run(agg.delete_messages, [message.id, "nope"]) == 1
    await run(n2.send_message, ["agg"], "other", {"y": 1})
    await nodes.broker.changed.wait()
    assert await run(agg.clear_messages, "read", 3600) == 0  # younger than an hour
    assert await run(agg.clear_messages, "read") == 1
    assert await run(agg.clear_messages, "all") == 1


async def test_await_times_out_with_none(nodes: Nodes) -> None:
    agg, n1, _ = await sdks(nodes)
    await run(n1.send_message, ["agg"], "c", {})
    started = time.monotonic()
    got = await run(agg.await_messages, ["n1", "n2"], "c", timeout=0.3)
    assert got["n2"] is None
    assert got["n1"] is not None
    assert time.monotonic() - started < 3


async def test_send_and_wait_for_responses_without_timeout(nodes: Nodes) -> None:
    agg, n1, _ = await sdks(nodes)

    def answer() -> None:
        asked = n1.await_messages(["agg"], "round", timeout=10)["agg"]
        assert asked is not None
        n1.send_message(["agg"], "round", {"echo": asked[-1].body["q"] * 2})

    responder = threading.Thread(target=answer)
    responder.start()
    got = await run(
        agg.send_message_and_wait_for_responses, ["n1"], "round", {"q": 21}, timeout=None
    )
    await run(responder.join)
    assert (got["n1"] or [])[-1].body == {"echo": 42}


async def test_oversize_message_refused_before_sending(nodes: Nodes) -> None:
    _, n1, _ = await sdks(nodes)
    with pytest.raises(InvalidArgument, match="2 MB"):
        await run(n1.send_message, ["agg"], "big", {"blob": "x" * (2 * 1024 * 1024)})
    assert nodes.broker.deliveries == []


async def test_dropped_ack_is_retried_with_the_same_id(nodes: Nodes) -> None:
    agg, n1, _ = await sdks(nodes)
    nodes.broker.acks_to_drop = 1
    acked, failed = await run(
        n1.send_message, ["agg"], "c", {"v": 1}, max_attempts=3, attempt_timeout=0.3
    )
    assert (acked, failed) == (["agg"], [])
    ids = {e.message_id for e in nodes.broker.deliveries}
    assert len(nodes.broker.deliveries) == 2
    assert len(ids) == 1
    assert len(await run(agg.get_messages, "unread")) == 1


async def test_unacknowledged_within_timeout(nodes: Nodes) -> None:
    _, n1, _ = await sdks(nodes)
    nodes.broker.acks_to_drop = 100
    started = time.monotonic()
    acked, failed = await run(
        n1.send_message, ["agg"], "c", {}, max_attempts=5, timeout=1, attempt_timeout=10
    )
    assert (acked, failed) == ([], ["agg"])
    assert time.monotonic() - started < 3


async def test_intermediate_data_global_plain_and_sealed(nodes: Nodes) -> None:
    agg, n1, n2 = await sdks(nodes)
    saved: Any = await run(n1.save_intermediate_data, {"sum": 3.5}, "global", tag="t")
    assert set(saved) == {"status", "url", "id"}
    assert await run(n2.get_intermediate_data, "global", id=saved["id"]) == {"sum": 3.5}
    # Readable again (FLAME's global data was readable once).
    assert await run(agg.get_intermediate_data, "global", id=saved["id"]) == {"sum": 3.5}
    sealed: Any = await run(
        n1.save_intermediate_data, np.arange(3.0), "global", remote_node_ids=["agg"]
    )
    assert set(sealed) == {"agg"}
    value = await run(
        agg.get_intermediate_data, "global", id=sealed["agg"]["id"], sender_node_id="n1"
    )
    np.testing.assert_array_equal(value, np.arange(3.0))
    with pytest.raises(DecryptionError):  # n2 is not a recipient
        await run(n2.get_intermediate_data, "global", id=sealed["agg"]["id"], sender_node_id="n1")


async def test_tampered_ciphertext_raises_a_clear_error(nodes: Nodes) -> None:
    agg, n1, _ = await sdks(nodes)
    sealed: Any = await run(n1.save_intermediate_data, [1, 2], "global", remote_node_ids=["agg"])
    stored = nodes.storage.objects[sealed["agg"]["id"]]
    data = bytearray(stored.data)
    data[-5] ^= 1
    stored.data = bytes(data)
    with pytest.raises(DecryptionError, match="tampered"):
        await run(agg.get_intermediate_data, "global", id=sealed["agg"]["id"], sender_node_id="n1")


async def test_sealed_data_is_bound_to_its_storage_id(nodes: Nodes) -> None:
    # The node proposes the storage id and seals under it: a storage that serves one object's
    # bytes under another's id (same sender, recipient and analysis) is caught.
    agg, n1, _ = await sdks(nodes)
    first: Any = await run(n1.save_intermediate_data, [1], "global", remote_node_ids=["agg"])
    second: Any = await run(n1.save_intermediate_data, [2], "global", remote_node_ids=["agg"])
    first_id, second_id = first["agg"]["id"], second["agg"]["id"]
    stored = nodes.storage.objects
    assert stored[first_id].info.id == first_id  # the id the node chose is the storage id
    stored[first_id].data, stored[second_id].data = stored[second_id].data, stored[first_id].data
    with pytest.raises(DecryptionError):
        await run(agg.get_intermediate_data, "global", id=first_id, sender_node_id="n1")


async def test_send_and_await_intermediate_data(nodes: Nodes) -> None:
    agg, n1, n2 = await sdks(nodes)
    assert await run(n1.send_intermediate_data, ["agg"], {"n": 1}) == (["agg"], [])
    assert await run(n2.send_intermediate_data, ["agg"], [2], encrypted=False) == (["agg"], [])
    got = await run(agg.await_intermediate_data, ["n1", "n2"], timeout=5)
    assert got == {"n1": {"n": 1}, "n2": [2]}


async def test_local_data_tags(nodes: Nodes) -> None:
    _, n1, _ = await sdks(nodes)
    first: Any = await run(n1.save_intermediate_data, 1, "local", tag="result-a")
    await run(n1.save_intermediate_data, 2, "local", tag="result-a")
    await run(n1.save_intermediate_data, 3, "local", tag="other")
    assert await run(n1.get_intermediate_data, "local", id=first["id"]) == 1
    assert await run(n1.get_intermediate_data, "local", tag="result-a") == [1, 2]
    assert await run(n1.get_intermediate_data, "local", tag="result-a", tag_option="first") == 1
    assert await run(n1.get_intermediate_data, "local", tag="result-a", tag_option="last") == 2
    assert await run(n1.get_local_tags) == ["result-a", "other"]
    assert await run(n1.get_local_tags, "result") == ["result-a"]
    with pytest.raises(InvalidArgument):
        await run(n1.save_intermediate_data, 1, "local", remote_node_ids=["agg"])


async def test_submit_final_result(nodes: Nodes) -> None:
    agg, n1, _ = await sdks(nodes)
    response = await run(agg.submit_final_result, "mean=3")
    assert response["status"] == "success"
    assert response["id"]
    assert nodes.storage.results[-1].data == b"mean=3"
    await run(agg.submit_final_result, 10.0, local_dp={"epsilon": 1.0, "sensitivity": 1.0})
    assert float(nodes.storage.results[-1].data) != 10.0
    with pytest.raises(PermissionDenied):
        await run(n1.submit_final_result, "x")
    with pytest.raises(InvalidArgument):
        await run(agg.submit_final_result, [1, 2], local_dp={"epsilon": 1.0, "sensitivity": 1.0})


async def test_progress_is_monotone(nodes: Nodes) -> None:
    _, n1, _ = await sdks(nodes)
    assert n1.get_progress() == 0
    await run(n1.set_progress, 10.7)
    assert n1.get_progress() == 10
    await run(n1.set_progress, 5)
    assert n1.get_progress() == 10
    await run(n1.set_progress, 100)
    state = nodes.hosts["n1"].analyses["a1"]
    assert state.reporter.progress == 100
    assert any("only increases" in e.message for e in state.reporter._logs) or any(
        "only increases" in e.message for e in nodes.broker.logs("n1")
    )


async def test_flame_log(nodes: Nodes) -> None:
    _, n1, _ = await sdks(nodes)
    out = io.StringIO()
    await run(n1.flame_log, "waiting...", file=out, halt_submission=True)
    await run(n1.flame_log, "success", file=out, suppress_head=True)
    await run(n1.flame_log, b"bytes", file=out, log_type="debug")
    await run(n1.declare_log_types, {"custom": "info"})
    await run(n1.flame_log, "mine", file=out, log_type="custom")
    with pytest.raises(ValueError, match="unknown log_type"):
        await run(n1.flame_log, "x", log_type="unknown")
    with pytest.raises(FlameLogError):
        await run(n1.flame_log, "broken", file=out, log_type="error")
    assert "waiting..." in out.getvalue()
    assert "DEBUG" in out.getvalue()

    def submitted() -> list[str]:
        return [e.message for e in nodes.broker.logs("n1")]

    deadline = time.monotonic() + 5
    while not any("broken" in m for m in submitted()) and time.monotonic() < deadline:
        nodes.broker.changed.clear()
        await asyncio.wait_for(nodes.broker.changed.wait(), 5)
    messages = submitted()
    assert any("waiting..." in m and "success" in m for m in messages)
    assert any(e.log_type == "custom" for e in nodes.broker.logs("n1"))


async def test_ready_check_and_finished(nodes: Nodes) -> None:
    agg, n1, _ = await sdks(nodes)
    assert await run(agg.ready_check, ["n1", "n2"], timeout=5) == {"n1": True, "n2": True}
    assert await run(n1.analysis_finished) is True
    assert nodes.hosts["n1"].analyses["a1"].finished


async def test_ready_check_times_out_for_a_node_not_running(nodes: Nodes) -> None:
    address, state = await nodes.attach_analysis("agg")
    agg = await run(FlameCoreSDK, True, node_address=address, secret=state.secret)
    assert await run(agg.ready_check, ["n1"], attempt_interval=1, timeout=0.5) == {"n1": False}


async def test_data_sources(tmp_path: Path) -> None:
    data = tmp_path / "csv"
    data.mkdir()
    (data / "a.csv").write_text("x\n1\n")
    sources = ({"id": "files", "type": "files", "path": str(data)},)
    async for made in make_nodes(tmp_path, ("agg",), data_sources=sources):
        agg = await connect(made, "agg")
        assert [s["id"] for s in agg.get_data_sources()] == ["files"]
        assert agg.get_s3_data() == [{"a.csv": b"x\n1\n"}]
        assert agg.get_fhir_data([]) is None
        with pytest.raises(ValueError, match="no data source"):
            await run(agg.get_data_client, "nope")
