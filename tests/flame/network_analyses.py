"""Analyses tests/flame/test_sdk_network.py runs as real processes on real clients.

Each script checks what it receives itself: a failed assert ends its process non-zero, so the
analysis fails with the assert in its message and the test shows it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fedgrpc.flame import FlameCoreSDK

MEMBERS = ["n1", "n2"]
# Each member's share: the final result is the mean over all of them.
VALUES = {"n1": [1.0, 2.0, 3.0], "n2": [10.0, 20.0]}


def settings() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(os.environ.get("FEDGRPC_ANALYSIS_SETTINGS") or "{}")
    return loaded


def main() -> None:
    """One entry point for every node (the controller sends all the same task): by role."""
    flame = FlameCoreSDK(silent=True)
    if flame.get_role() == "aggregator":
        aggregator(flame)
    else:
        member(flame)


def member(flame: FlameCoreSDK) -> None:
    me = flame.get_id()
    assert flame.send_message(["agg"], "hello", {"from": me}, timeout=None) == (["agg"], [])
    ping = flame.await_messages(["agg"], "ping", timeout=None)["agg"]
    assert ping is not None
    assert len(ping) == 1, ping  # seen once, however often it was delivered
    flame.send_message(["agg"], "ping", {"from": me, "q": ping[0].body["q"]}, timeout=None)
    values = VALUES[me]
    share = {"sum": sum(values), "n": len(values)}
    assert flame.send_intermediate_data(["agg"], share, timeout=None) == (["agg"], [])
    flame.save_intermediate_data(share, "global", remote_node_ids=["agg"], tag="sealed-share")
    flame.save_intermediate_data({"node": me}, "global", tag="shared")
    flame.flame_log(f"{me} sent its share", log_type="info")


def aggregator(flame: FlameCoreSDK) -> None:
    hello = flame.await_messages(MEMBERS, "hello", timeout=None)
    assert {s: [m.body["from"] for m in ms or []] for s, ms in hello.items()} == {
        n: [n] for n in MEMBERS
    }, hello
    answers = flame.send_message_and_wait_for_responses(MEMBERS, "ping", {"q": 7}, timeout=None)
    assert {s: [m.body["q"] for m in ms or []] for s, ms in answers.items()} == {
        n: [7] for n in MEMBERS
    }, answers
    shares = flame.await_intermediate_data(MEMBERS, timeout=None)
    _check_global_reads(flame, shares)
    _message_the_offline_node(flame)
    total = sum(share["sum"] for share in shares.values())
    count = sum(share["n"] for share in shares.values())
    flame.flame_log(f"exact mean {total / count}", log_type="info")
    flame.submit_final_result(total / count, local_dp={"epsilon": 1.0, "sensitivity": 1.0})


def _check_global_reads(flame: FlameCoreSDK, shares: dict[str, Any]) -> None:
    """Global data reads any number of times (FLAME's was readable once), sealed or not."""
    for _ in range(2):
        for sender in MEMBERS:
            sealed = flame.get_intermediate_data(
                "global", tag="sealed-share", sender_node_id=sender
            )
            assert sealed == [shares[sender]], (sender, sealed)
        shared = flame.get_intermediate_data("global", tag="shared")
        assert sorted(item["node"] for item in shared) == MEMBERS, shared


def _message_the_offline_node(flame: FlameCoreSDK) -> None:
    """Wait for the test to stop n2's client, then message n2: acknowledged once it is back."""
    with open(settings()["offline_signal"]) as fifo:  # blocks until the test writes
        assert fifo.read().strip() == "n2 offline"
    sent = flame.send_message(["n2"], "late", {"after": "restart"}, timeout=None)
    assert sent == (["n2"], []), sent
    flame.flame_log("n2 acknowledged the late message", log_type="info")
