"""Analysis nodes as raw Connect streams: a real gRPC client on a combiner, speaking protobuf.

The hub tests drive the broker and the analysis lifecycle with these, so every step (acks
dropped, duplicates, a node going away) is under the test's control.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from fedgrpc.config import ControllerConfig
from fedgrpc.controller.app import Controller
from fedgrpc.proto.combiner.v1 import combiner_pb2, combiner_pb2_grpc
from fedgrpc.proto.messaging.v1 import messaging_pb2 as mpb
from fedgrpc.proto.messaging.v1 import messaging_pb2_grpc
from fedgrpc.rpc.channel import open_channel
from fedgrpc.security.tokens import Role
from tests.integration.conftest import FAST, LocalNetwork, eventually


class FakeNode:
    """One node: a Connect stream with a hello, an outgoing queue and what it received."""

    def __init__(
        self, name: str, combiner_address: str, *, token: str | None, auto_ack: bool = True
    ) -> None:
        self.name = name
        self.token = token
        self.auto_ack = auto_ack
        self.public_key = bytes([len(name)]) * 32
        self.channel = open_channel(combiner_address, max_message_size=16 << 20, token=token)
        self._outgoing: asyncio.Queue[combiner_pb2.ClientMessage | None] = asyncio.Queue()
        self.messages: list[mpb.Envelope] = []
        self.receipts: list[mpb.Receipt] = []
        self.tasks: list[mpb.AnalysisTask] = []
        self.stops: list[mpb.StopAnalysis] = []
        self.welcomed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._sequence: dict[str, int] = {}

    async def connect(self) -> FakeNode:
        stub = combiner_pb2_grpc.CombinerServiceStub(self.channel)
        self._call = stub.Connect(self._requests())
        self._reader = asyncio.ensure_future(self._read())
        await asyncio.wait_for(self.welcomed.wait(), 10)
        return self

    async def _requests(self) -> AsyncIterator[combiner_pb2.ClientMessage]:
        hello = combiner_pb2.ClientHello(name=self.name, public_key=self.public_key)
        yield combiner_pb2.ClientMessage(hello=hello)
        while (message := await self._outgoing.get()) is not None:
            yield message

    async def _read(self) -> None:
        try:
            async for message in self._call:
                self._on(message)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass

    def _on(self, message: combiner_pb2.ServerMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "welcome":
            self.welcomed.set()
        elif kind == "heartbeat":
            self.send(combiner_pb2.ClientMessage(heartbeat=combiner_pb2.Heartbeat()))
        elif kind == "message":
            self.messages.append(message.message)
            if self.auto_ack:
                self.ack(message.message)
        elif kind == "receipt":
            self.receipts.append(message.receipt)
        elif kind == "start_analysis":
            self.tasks.append(message.start_analysis)
        elif kind == "stop_analysis":
            self.stops.append(message.stop_analysis)

    def send(self, message: combiner_pb2.ClientMessage) -> None:
        self._outgoing.put_nowait(message)

    def ack(self, envelope: mpb.Envelope) -> None:
        ack = mpb.Ack(
            message_id=envelope.message_id, analysis_id=envelope.analysis_id, sender=envelope.sender
        )
        self.send(combiner_pb2.ClientMessage(ack=ack))

    def message(
        self, analysis_id: str, to: str, body: Any, *, message_id: str = "", ttl: float = 0
    ) -> mpb.Envelope:
        """Send a message (the sender field is left wrong on purpose: the combiner stamps it)."""
        sequence = self._sequence[to] = self._sequence.get(to, 0) + 1
        envelope = mpb.Envelope(
            message_id=message_id or uuid.uuid4().hex,
            analysis_id=analysis_id,
            sender="someone-else",
            recipient=to,
            category="test",
            body=json.dumps(body).encode() if not isinstance(body, bytes) else body,
            sequence=sequence,
            ttl_seconds=ttl,
        )
        self.send(combiner_pb2.ClientMessage(message=envelope))
        return envelope

    def report(self, analysis_id: str, status: str = "", progress: int = -1, **extra: Any) -> None:
        update = mpb.AnalysisUpdate(
            analysis_id=analysis_id, node_id="forged", status=status, progress=progress, **extra
        )
        self.send(combiner_pb2.ClientMessage(analysis_update=update))

    def storage(self, controller_address: str) -> messaging_pb2_grpc.StorageServiceStub:
        return messaging_pb2_grpc.StorageServiceStub(
            open_channel(controller_address, max_message_size=16 << 20, token=self.token)
        )

    def bodies(self) -> list[Any]:
        return [json.loads(envelope.body) for envelope in self.messages]

    async def close(self) -> None:
        self._outgoing.put_nowait(None)
        if self._reader is not None:
            self._call.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.channel.close()


def admin_storage(network: LocalNetwork) -> messaging_pb2_grpc.StorageServiceStub:
    """StorageService with the admin token, which may name any node: for tests of the
    analysis-membership rules (a node's own token may only name itself)."""
    channel = open_channel(
        network.controller.address, max_message_size=16 << 20, token=network.admin_token
    )
    return messaging_pb2_grpc.StorageServiceStub(channel)


async def start_network(tmp_path: Path, **controller: Any) -> LocalNetwork:
    settings = {"message_retry_seconds": 0.3, "analysis_node_grace_seconds": 1.0, **controller}
    config = ControllerConfig(
        port=0, data_dir=tmp_path / "controller", max_model_size=32 << 20, **FAST, **settings
    )
    ctrl = Controller(config)
    await ctrl.start()
    network = LocalNetwork(data_dir=tmp_path, controller=ctrl)
    await network.add_combiner("c1")
    await network.add_combiner("c2")
    return network


@contextlib.asynccontextmanager
async def running_network(tmp_path: Path, **controller: Any) -> AsyncIterator[LocalNetwork]:
    """:func:`start_network`, closed again when the block ends (the tests' fixture)."""
    network = await start_network(tmp_path, **controller)
    try:
        yield network
    finally:
        await network.close()


async def add_node(network: LocalNetwork, name: str, combiner: int = 0, **kwargs: Any) -> FakeNode:
    address = network.combiners[combiner].address
    token = network.token(Role.CLIENT, name) or None
    node = await FakeNode(name, address, token=token, **kwargs).connect()
    registry = network.controller.network.registry
    await eventually(lambda: registry.link_of_client(name) is not None, what=f"{name} online")
    await network.controller.writer.flush()  # its client record (and public key) is written
    return node


async def node_offline(network: LocalNetwork, node: FakeNode) -> None:
    await node.close()
    registry = network.controller.network.registry
    await eventually(lambda: registry.link_of_client(node.name) is None, what="node offline")
