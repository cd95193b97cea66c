"""The Connect codecs: a task with a shared model and a client's encoded update decode to
exactly the messages protobuf would build with the model set on them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fedgrpc.model.chunking import model_digest
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.rpc.connect import (
    SharedTask,
    encode_update,
    serialize_client_outgoing,
    serialize_outgoing,
)
from fedgrpc.rpc.wire import encode_in_submessage, read_varint, varint
from fedgrpc.transfer import dict_to_struct


def _train(task_id: str = "") -> combiner_pb2.ServerMessage:
    task = combiner_pb2.TrainTask(
        task_id=task_id, session_id="s", round_id="r", round_number=3, model_id="m", timeout=9.5
    )
    task.settings.update({"epochs": 2, "lr": 0.1})
    return combiner_pb2.ServerMessage(train=task)


def _validate(task_id: str = "") -> combiner_pb2.ServerMessage:
    task = combiner_pb2.ValidateTask(task_id=task_id, session_id="s", round_id="r", model_id="m")
    return combiner_pb2.ServerMessage(validate=task)


@pytest.mark.parametrize("make", [_train, _validate])
@pytest.mark.parametrize("size", [1, 127, 128, 40_000, 3 * 1024 * 1024 + 7])
def test_each_clients_shared_model_task_decodes_to_its_task_with_the_model(
    make: Callable[..., combiner_pb2.ServerMessage], size: int
) -> None:
    model = bytes(range(256)) * (size // 256) + b"\x01" * (size % 256)
    shared = SharedTask(make(), model, model_digest(model))
    # Ids of different lengths: each client's message has its own lengths around one body.
    for task_id in ["t1", "a" * 32, "b" * 200]:
        message = shared.for_client(task_id)
        expected = make(task_id)
        task = getattr(expected, str(expected.WhichOneof("kind")))
        task.model, task.model_digest = model, model_digest(model)
        assert combiner_pb2.ServerMessage.FromString(serialize_outgoing(message)) == expected
        assert message.decoded() == expected


def test_the_model_is_held_once_and_not_copied_into_each_clients_message() -> None:
    model = b"x" * 1000
    shared = SharedTask(_train(), model, model_digest(model))
    messages = [shared.for_client(f"t{i}") for i in range(3)]
    assert not shared.message.train.model  # the task holds no copy
    assert all(vars(message).keys() == {"task", "task_id"} for message in messages)
    first = serialize_outgoing(messages[0])
    assert first.count(model) == 1
    assert shared._model is None  # from now on the encoded body is the only copy


def test_only_train_and_validate_tasks_without_an_id_carry_a_shared_model() -> None:
    heartbeat = combiner_pb2.ServerMessage(heartbeat=combiner_pb2.Heartbeat())
    with pytest.raises(ValueError, match="train or validate"):
        SharedTask(heartbeat, b"x", model_digest(b"x"))
    with pytest.raises(ValueError, match="no task id"):
        SharedTask(_train("t1"), b"x", model_digest(b"x"))


def test_plain_messages_are_serialized_by_protobuf() -> None:
    message = _train()
    assert serialize_outgoing(message) == message.SerializeToString()


@pytest.mark.parametrize("size", [0, 1, 200, 70_000])
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_an_encoded_update_decodes_to_the_update_with_its_model(
    size: int, kind: Callable[[bytes], bytes]
) -> None:
    model = bytes(i % 251 for i in range(size))
    update = combiner_pb2.ModelUpdate(
        task_id="t", session_id="s", round_id="r", metadata=dict_to_struct({"num_examples": 7})
    )
    encoded = serialize_client_outgoing(encode_update(update, kind(model)))
    expected = combiner_pb2.ModelUpdate()
    expected.CopyFrom(update)
    expected.model = model
    assert combiner_pb2.ClientMessage.FromString(encoded) == combiner_pb2.ClientMessage(
        update=expected
    )
    assert not update.model  # the caller's message is left as it was


def test_plain_client_messages_are_serialized_by_protobuf() -> None:
    message = combiner_pb2.ClientMessage(heartbeat=combiner_pb2.Heartbeat())
    assert serialize_client_outgoing(message) == message.SerializeToString()


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31, 2**63])
def test_varints_round_trip(value: int) -> None:
    encoded = varint(value)
    assert read_varint(b"\xff" + encoded, 1) == (value, 1 + len(encoded))


def test_a_truncated_or_overlong_varint_is_malformed() -> None:
    assert read_varint(b"\x80\x80", 0) == (-1, 0)
    assert read_varint(b"\xff" * 11, 0) == (-1, 0)


def test_only_a_lone_submessage_is_encoded_by_hand() -> None:
    with pytest.raises(ValueError, match="only field"):
        encode_in_submessage(combiner_pb2.ClientMessage(), "update", [("model", b"x")])
