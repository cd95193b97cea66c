"""Nodes without a hub: AnalysisHosts joined by an in-memory broker and storage service.

The broker does what the controller does for messages (stamp the sender, deliver, turn acks
into receipts, hold messages for a disconnected node) so the node side can be tested on its
own; the end-to-end tests with the real controller live in tests/integration.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedgrpc.client.host import AnalysisHost, AnalysisState
from fedgrpc.config import ClientConfig
from fedgrpc.errors import AlreadyExists, NotFound, PermissionDenied
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.messaging.v1 import messaging_pb2


class FakeStorage:
    """StorageService's behaviour, in memory."""

    def __init__(self) -> None:
        self.objects: dict[str, messaging_pb2.ObjectData] = {}
        self.results: list[messaging_pb2.SubmitResultRequest] = []

    async def PutObject(  # noqa: N802 - the stub's method name
        self, request: messaging_pb2.PutObjectRequest
    ) -> messaging_pb2.StoredObject:
        object_id = request.id or uuid.uuid4().hex
        if object_id in self.objects:
            raise AlreadyExists(f"object {object_id} exists")
        info = messaging_pb2.StoredObject(
            id=object_id,
            analysis_id=request.analysis_id,
            sender=request.node_id,
            tag=request.tag,
            recipients=request.recipients,
            content_type=request.content_type,
            size=len(request.data),
            sha256=hashlib.sha256(request.data).hexdigest(),
            kind="intermediate",
        )
        self.objects[info.id] = messaging_pb2.ObjectData(info=info, data=request.data)
        return info

    async def GetObject(  # noqa: N802 - the stub's method name
        self, request: messaging_pb2.GetObjectRequest
    ) -> messaging_pb2.ObjectData:
        found = self.objects.get(request.id)
        if found is None or found.info.analysis_id != request.analysis_id:
            raise NotFound(f"no object {request.id}")
        return found

    async def ListObjects(  # noqa: N802 - the stub's method name
        self, request: messaging_pb2.ListObjectsRequest
    ) -> messaging_pb2.ListObjectsResponse:
        return messaging_pb2.ListObjectsResponse(
            objects=[
                o.info
                for o in self.objects.values()
                if o.info.analysis_id == request.analysis_id
                and (not request.tag or o.info.tag == request.tag)
                and (not request.sender or o.info.sender == request.sender)
            ]
        )

    async def SubmitResult(  # noqa: N802 - the stub's method name
        self, request: messaging_pb2.SubmitResultRequest
    ) -> messaging_pb2.StoredObject:
        if request.node_id != "agg":
            raise PermissionDenied("not the aggregator")
        self.results.append(request)
        return messaging_pb2.StoredObject(id=uuid.uuid4().hex, kind="result")


@dataclass
class FakeBroker:
    hosts: dict[str, AnalysisHost] = field(default_factory=dict)
    online: set[str] = field(default_factory=set)
    held: dict[str, list[messaging_pb2.Envelope]] = field(default_factory=dict)
    updates: list[tuple[str, messaging_pb2.AnalysisUpdate]] = field(default_factory=list)
    deliveries: list[messaging_pb2.Envelope] = field(default_factory=list)
    acks_to_drop: int = 0
    duplicate_deliveries: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def connect(self, host: AnalysisHost) -> None:
        self.hosts[host.name] = host
        outbox: asyncio.Queue[combiner_pb2.ClientMessage] = asyncio.Queue()
        self._pumps.append(asyncio.ensure_future(self._pump(host.name, outbox)))
        host.connected(outbox)
        self.online.add(host.name)
        for envelope in self.held.pop(host.name, []):
            self._deliver(envelope)

    def disconnect(self, name: str) -> None:
        self.online.discard(name)
        self.hosts[name].disconnected()

    async def _pump(self, name: str, outbox: asyncio.Queue[combiner_pb2.ClientMessage]) -> None:
        while True:
            message = await outbox.get()
            kind = message.WhichOneof("kind")
            if kind == "message":
                envelope = messaging_pb2.Envelope()
                envelope.CopyFrom(message.message)
                envelope.sender = name
                self._deliver(envelope)
            elif kind == "ack":
                self._ack(name, message.ack)
            elif kind == "analysis_update":
                self.updates.append((name, message.analysis_update))
            self.changed.set()

    def _deliver(self, envelope: messaging_pb2.Envelope) -> None:
        if envelope.recipient not in self.online:
            self.held.setdefault(envelope.recipient, []).append(envelope)
            return
        self.deliveries.append(envelope)
        host = self.hosts[envelope.recipient]
        for _ in range(2 if self.duplicate_deliveries else 1):
            host.handle(combiner_pb2.ServerMessage(message=envelope))

    def _ack(self, recipient: str, ack: messaging_pb2.Ack) -> None:
        if self.acks_to_drop > 0:
            self.acks_to_drop -= 1
            return
        receipt = messaging_pb2.Receipt(
            message_id=ack.message_id,
            analysis_id=ack.analysis_id,
            recipient=recipient,
            sender=ack.sender,
            delivered=True,
        )
        if ack.sender in self.online:
            self.hosts[ack.sender].handle(combiner_pb2.ServerMessage(receipt=receipt))

    def statuses(self, node: str) -> list[str]:
        return [u.status for n, u in self.updates if n == node and u.status]

    def logs(self, node: str) -> list[messaging_pb2.LogEntry]:
        return [entry for n, u in self.updates if n == node for entry in u.logs]

    async def close(self) -> None:
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


def make_task(
    node: str, nodes: dict[str, AnalysisHost], *, analysis_id: str = "a1", entrypoint: str = ""
) -> messaging_pb2.AnalysisTask:
    return messaging_pb2.AnalysisTask(
        analysis_id=analysis_id,
        project_id="p1",
        node_id=node,
        role="aggregator" if node == "agg" else "default",
        entrypoint=entrypoint,
        participants=[
            messaging_pb2.Participant(
                node_id=n, role="aggregator" if n == "agg" else "default", public_key=h.public_key
            )
            for n, h in nodes.items()
        ],
    )


@dataclass
class Nodes:
    broker: FakeBroker
    hosts: dict[str, AnalysisHost]
    storage: FakeStorage

    async def attach_analysis(
        self, node: str, analysis_id: str = "a1"
    ) -> tuple[str, AnalysisState]:
        """Register an analysis on ``node`` without a process; (node service address, state)."""
        host = self.hosts[node]
        state = host._new_state(make_task(node, self.hosts, analysis_id=analysis_id))
        state.data._storage = self.storage  # type: ignore[assignment]
        server = await host._ensure_server()
        return server.address, state


async def make_nodes(
    tmp_path: Path, names: tuple[str, ...] = ("agg", "n1", "n2"), **config: Any
) -> AsyncIterator[Nodes]:
    broker = FakeBroker()
    storage = FakeStorage()
    hosts = {}
    for name in names:
        cfg = ClientConfig(name=name, data_dir=tmp_path / name, analysis_stop_grace=1.0, **config)
        hosts[name] = AnalysisHost(cfg, name)
    for host in hosts.values():
        broker.connect(host)
    try:
        yield Nodes(broker, hosts, storage)
    finally:
        for host in hosts.values():
            await host.close()
        await broker.close()
