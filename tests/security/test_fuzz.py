"""Fuzzing every servicer method of a real controller and combiner with hypothesis.

Requests are generated from the protobuf descriptors (random fields, huge strings, unknown
enum numbers, random bytes; short random streams for streaming methods) and sent with an admin
token over loopback. Every call must end with a proper status code (never UNKNOWN or INTERNAL),
the servers must still answer health checks, and the statestore must stay consistent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgrpc.combiner.app import Combiner
from fedgrpc.security.bearer import bearer_channel
from fedgrpc.security.keystore import read_admin_token
from tests.api.conftest import BackgroundLoop
from tests.integration.conftest import LocalNetwork
from tests.security.helpers import METHODS, MOUNTED

pytestmark = pytest.mark.timeout(180)

BAD_CODES = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
HUGE = "x" * 70_000
FUZZ = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: st.one_of(
        st.text(max_size=40), st.sampled_from(["", "../x", "a b", "fedavg", HUGE, "\x00"])
    ),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=4096),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True, allow_infinity=True),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_ENUM: st.integers(-3, 50),  # mostly numbers the enum does not define
}
_STRUCTS = st.one_of(
    st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=20), max_size=4),
    st.just({"blob": HUGE}),
)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    return _SCALARS.get(field.type, st.integers(0, 2**31 - 1))


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    """A message of ``descriptor``'s type with a random subset of fields set."""
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None:
            if field.message_type.full_name == "google.protobuf.Struct":
                struct = struct_pb2.Struct()
                struct.update(draw(_STRUCTS))
                target = getattr(message, field.name)
                (target.add() if field.is_repeated else target).CopyFrom(struct)
            elif depth < 2 and not field.message_type.GetOptions().map_entry:
                count = draw(st.integers(0, 2)) if field.is_repeated else 1
                for _ in range(count):
                    value = draw(messages(field.message_type, depth + 1))
                    target = getattr(message, field.name)
                    (target.add() if field.is_repeated else target).CopyFrom(value)
            continue
        if field.containing_oneof is not None and message.WhichOneof(field.containing_oneof.name):
            continue
        if field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=3)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def calls(kind: str) -> list[str]:
    return sorted(m for m in METHODS if m.split("/")[1] in MOUNTED_BY_KIND[kind])


MOUNTED_BY_KIND = {kind.value: services for kind, services in MOUNTED.items()}


class Target:
    """A controller and a registered combiner on a background loop, and admin channels."""

    def __init__(self, root: Path) -> None:
        self.loop = BackgroundLoop()
        self.loop.start()
        self.net: LocalNetwork = self.loop.run(self._start(root))
        self.combiner: Combiner = self.net.combiners[0]
        token = read_admin_token(self.net.controller.config.data_dir)
        self.channels = {
            "controller": bearer_channel(grpc.insecure_channel(self.net.controller.address), token),
            "combiner": bearer_channel(grpc.insecure_channel(self.combiner.address), token),
        }

    async def _start(self, root: Path) -> LocalNetwork:
        from fedgrpc.config import ControllerConfig
        from fedgrpc.controller.app import Controller
        from tests.integration.conftest import FAST

        controller = Controller(ControllerConfig(port=0, data_dir=root / "controller", **FAST))
        await controller.start()
        net = LocalNetwork(data_dir=root, controller=controller)
        await net.add_combiner("fuzz-combiner")
        return net

    def call(self, kind: str, method: str, requests: list[Message]) -> grpc.StatusCode:
        descriptor = METHODS[method]
        channel = self.channels[kind]
        shape = {
            (False, False): channel.unary_unary,
            (False, True): channel.unary_stream,
            (True, False): channel.stream_unary,
            (True, True): channel.stream_stream,
        }[(descriptor.client_streaming, descriptor.server_streaming)]
        multicallable = shape(
            method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
        )
        request: Any = iter(requests) if descriptor.client_streaming else requests[0]
        try:
            result = multicallable(request, timeout=1.5)
            if descriptor.server_streaming:
                for _ in result:
                    pass
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    def healthy(self) -> bool:
        for channel in self.channels.values():
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                return False
        return True

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.loop.run(self.net.close())
        self.loop.stop()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    opened = Target(tmp_path_factory.mktemp("fuzz"))
    try:
        yield opened
    finally:
        opened.close()


CASES = [(kind, method) for kind in ("controller", "combiner") for method in calls(kind)]


@pytest.mark.parametrize(("kind", "method"), CASES, ids=[f"{k}:{m}" for k, m in CASES])
def test_fuzzed_requests_get_proper_status_codes(target: Target, kind: str, method: str) -> None:
    descriptor = METHODS[method]
    count = st.integers(0, 3) if descriptor.client_streaming else st.just(1)

    @FUZZ
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        requests = [data.draw(messages(descriptor.input_type)) for _ in range(data.draw(count))]
        code = target.call(kind, method, requests)
        assert code not in BAD_CODES, f"{method} answered {code.name}"

    run()
    assert target.healthy()


def test_statestore_stays_consistent_after_fuzzing(target: Target) -> None:
    """Run last in this module: every record is whole and every model has its bytes."""
    store = target.net.controller.store
    for session in store.sessions.list()["result"]:
        assert isinstance(session.get("config"), dict), session
        assert session.get("status") in ("created", "running", "finished", "failed", "stopped")
    for model in store.models.list()["result"]:
        assert target.net.controller.models.exists(model["id"]), f"model {model['id']} has no bytes"
    assert target.healthy()
