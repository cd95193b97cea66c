"""The round record's per-combiner report, built from the combiners' results when written."""

from __future__ import annotations

from fedgrpc.controller.session_runner import RoundRecord
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.transfer import dict_to_struct


def _result(updates: int, error: str = "") -> network_pb2.RoundResult:
    client = network_pb2.ClientRoundReport(
        client_name="c1", status="ok", num_examples=5, metadata=dict_to_struct({"loss": 0.5})
    )
    return network_pb2.RoundResult(
        num_updates=updates, total_weight=5.0 * updates, error=error, clients=[client]
    )


def test_reports_mark_rejected_partials_and_lost_combiners() -> None:
    record = RoundRecord(id="r", number=1)
    assert record.combiners() == []
    record.results = {"a": _result(1), "b": _result(2), "c": _result(0, error="no clients")}
    record.lost = {"z", "y"}
    record.rejected = {"b": "shape mismatch"}

    reports = {entry["name"]: entry for entry in record.combiners()}
    assert [entry["name"] for entry in record.combiners()] == ["a", "b", "c", "y", "z"]
    assert reports["a"]["status"] == "ok"
    assert reports["a"]["num_updates"] == 1
    assert reports["a"]["clients"][0]["metadata"] == {"loss": 0.5}
    assert (reports["b"]["status"], reports["b"]["error"]) == ("rejected", "shape mismatch")
    assert (reports["c"]["status"], reports["c"]["error"]) == ("failed", "no clients")
    assert reports["y"]["status"] == reports["z"]["status"] == "lost"
