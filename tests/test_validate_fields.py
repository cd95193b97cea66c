"""validate_fields: which fields of a peer's message are checked, and how (names, labels,
Struct sizes), through nested, repeated and map fields."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from fedgrpc.errors import InvalidArgument, ResourceExhausted
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.control.v1 import control_pb2
from fedgrpc.proto.messaging.v1 import node_pb2
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.security.limits import validate_fields


def _report(*clients: network_pb2.ClientRoundReport) -> network_pb2.CombinerReport:
    result = network_pb2.RoundResult(round_id="r1", session_id="s1", clients=clients)
    return network_pb2.CombinerReport(round_result=result)


def test_a_valid_nested_message_passes() -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"num_examples": 100})
    client = network_pb2.ClientRoundReport(client_name="client-1", status="ok", metadata=metadata)
    validate_fields(_report(client))


def test_a_bad_name_deep_in_a_repeated_field_is_refused_by_its_field_name() -> None:
    report = _report(
        network_pb2.ClientRoundReport(client_name="client-1"),
        network_pb2.ClientRoundReport(client_name="../etc"),
    )
    with pytest.raises(InvalidArgument, match=r"client_name: '\.\./etc' is not valid"):
        validate_fields(report)


def test_each_item_of_a_repeated_name_field_is_checked() -> None:
    hello = combiner_pb2.ClientHello(name="site-a", tags=["gpu", "bad tag"])
    with pytest.raises(InvalidArgument, match="tags: 'bad tag'"):
        validate_fields(combiner_pb2.ClientMessage(hello=hello))


def test_free_text_and_payloads_are_not_held_to_the_name_rules() -> None:
    update = combiner_pb2.ModelUpdate(task_id="t1", model=b"\x00/ ..", digest="not a name?")
    validate_fields(combiner_pb2.ClientMessage(update=update))
    failed = combiner_pb2.TaskFailed(task_id="t1", message="train raised: a / b\nline two")
    validate_fields(combiner_pb2.ClientMessage(task_failed=failed))


def test_empty_names_and_unset_messages_are_skipped() -> None:
    validate_fields(network_pb2.CombinerReport())
    validate_fields(_report(network_pb2.ClientRoundReport(client_name="")))


def test_a_display_name_may_hold_spaces_but_no_control_characters() -> None:
    validate_fields(control_pb2.StartSessionRequest(name="my first session"))
    with pytest.raises(InvalidArgument, match="name: must be 1-256 printable"):
        validate_fields(control_pb2.StartSessionRequest(name="forged\nlog line"))


def test_a_struct_over_the_limit_is_refused() -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"notes": "x" * 200})
    update = combiner_pb2.ModelUpdate(task_id="t1", metadata=metadata)
    message = combiner_pb2.ClientMessage(update=update)
    validate_fields(message, limit=1000)
    refused = r"metadata: \d+ bytes serialized, the limit is 100$"
    with pytest.raises(ResourceExhausted, match=refused):
        validate_fields(message, limit=100)


def test_the_messages_in_a_map_are_checked_and_its_keys_are_not() -> None:
    response = node_pb2.AwaitMessagesResponse()
    response.by_sender["any key: free text"].messages.add(id="m1", sender="node-1")
    validate_fields(response)
    response.by_sender["node-2"].messages.add(id="m 2")
    with pytest.raises(InvalidArgument, match="id: 'm 2'"):
        validate_fields(response)
