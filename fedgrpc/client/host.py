"""Everything a node does for analyses: keys, inboxes, messages, processes, the node service.

:class:`fedgrpc.client.node.Client` owns one :class:`AnalysisHost` and hands it the analysis
members of ``ServerMessage``; the host writes back through an :class:`Uplink` that survives
reconnects (what is sent while disconnected goes out on the next stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from fedgrpc.background import BackgroundTasks
from fedgrpc.client.analysis import (
    EXECUTING,
    FAILED,
    AnalysisProcess,
    UpdateReporter,
    runner_environment,
)
from fedgrpc.client.analysis_data import AnalysisData
from fedgrpc.client.inbox import SYSTEM_PREFIX, Inbox, StoredMessage
from fedgrpc.client.local_storage import LocalStorage
from fedgrpc.client.messenger import Messenger, Outbox, Uplink, receive
from fedgrpc.client.running import RunningMarks, lost_report
from fedgrpc.config import ClientConfig
from fedgrpc.errors import FedgrpcError, Unauthenticated
from fedgrpc.flame.crypto import NodeKeys
from fedgrpc.packages.fetch import fetch_package
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from fedgrpc.rpc.channel import open_channel
from fedgrpc.rpc.server import RunningServer
from fedgrpc.security.tls import channel_credentials_for

log = logging.getLogger(__name__)

READY_PING = SYSTEM_PREFIX + "ready"
READY_PONG = SYSTEM_PREFIX + "ready-ok"
FINISHED = SYSTEM_PREFIX + "finished"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def default_data_dir(name: str) -> Path:
    """``$XDG_DATA_HOME/fedgrpc/nodes/<name>`` (``~/.local/share`` without XDG_DATA_HOME)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fedgrpc" / "nodes" / name


@dataclass
class AnalysisState:
    task: messaging_pb2.AnalysisTask
    secret: str
    inbox: Inbox
    reporter: UpdateReporter
    data: AnalysisData
    process: AnalysisProcess | None = None
    sdk_connected: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False
    finished_partners: set[str] = field(default_factory=set)

    @property
    def partners(self) -> list[str]:
        return [p.node_id for p in self.task.participants if p.node_id != self.task.node_id]


class AnalysisHost:
    def __init__(self, config: ClientConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.data_dir = Path(config.data_dir or default_data_dir(name))
        self.keys = NodeKeys.load_or_create(self.data_dir / "keys")
        self.uplink = Uplink()
        self.messenger = Messenger(self.uplink)
        self.analyses: dict[str, AnalysisState] = {}
        self._by_secret: dict[str, str] = {}
        self._inboxes: dict[str, Inbox] = {}
        self._server: RunningServer | None = None
        self._channel: grpc.aio.Channel | None = None
        self._start_lock = asyncio.Lock()
        self._started_events: dict[str, asyncio.Event] = {}
        self._background = BackgroundTasks("analysis host")
        # Test-only hook: this many acks are dropped instead of sent, so a test can make the
        # controller deliver a message again (tests/flame/test_sdk_network.py). Always 0 in
        # production; nothing outside tests sets it.
        self.test_drop_acks = 0
        self._closing = False
        self._marks = RunningMarks(self.data_dir / "running")
        for lost in self._marks.take_all():  # sent first on the first stream
            self.uplink.send(lost_report(lost))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._background.spawn(coroutine)

    @property
    def public_key(self) -> bytes:
        return self.keys.public_bytes

    # --- stream events --------------------------------------------------------------------

    def connected(self, outbox: Outbox) -> None:
        self.uplink.attach(outbox)

    def disconnected(self) -> None:
        self.uplink.detach()

    def handle(self, message: combiner_pb2.ServerMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "message":
            self._spawn(self._deliver(message.message))
        elif kind == "receipt":
            self.messenger.on_receipt(message.receipt)
        elif kind == "start_analysis":
            self._spawn(self._start(message.start_analysis))
        elif kind == "stop_analysis":
            self._spawn(self.stop(message.stop_analysis.analysis_id, message.stop_analysis.reason))

    # --- analyses -------------------------------------------------------------------------

    def inbox(self, analysis_id: str) -> Inbox:
        # Messages can arrive before this node's start_analysis does: keep them for it.
        return self._inboxes.setdefault(analysis_id, Inbox())

    def state_for_secret(self, secret: str) -> AnalysisState:
        analysis_id = self._by_secret.get(secret)
        if analysis_id is None:
            raise Unauthenticated("unknown or missing analysis secret")
        return self.analyses[analysis_id]

    async def _start(self, task: messaging_pb2.AnalysisTask) -> None:
        if task.analysis_id in self.analyses:
            return  # a repeated start (controller retry) changes nothing
        state = self._new_state(task)
        self._marks.add(task.analysis_id)
        try:
            server = await self._ensure_server()
            package_dir = await self._package_dir(task)
            env = runner_environment(
                task,
                node_address=server.address,
                secret=state.secret,
                python_path=self.config.analysis_python_path,
                package_dir=package_dir,
            )
            state.process = AnalysisProcess(
                state.reporter, stop_grace=self.config.analysis_stop_grace
            )
            await state.process.start(env, timeout=task.timeout or None)
        except (FedgrpcError, OSError) as exc:
            log.warning("analysis %s could not start: %s", task.analysis_id, exc)
            state.reporter.set_status(FAILED, f"could not start the analysis: {exc}")
            self._marks.remove(task.analysis_id)
            return
        await state.process.done.wait()
        if not self._closing:  # ended while the node runs: its outcome was reported
            self._marks.remove(task.analysis_id)

    def _new_state(self, task: messaging_pb2.AnalysisTask) -> AnalysisState:
        secret = secrets.token_urlsafe(32)
        data = AnalysisData(
            task=task,
            keys=self.keys,
            local=LocalStorage(self.data_dir, task.project_id),
            storage=self._storage_stub(),
        )
        state = AnalysisState(
            task=task,
            secret=secret,
            inbox=self.inbox(task.analysis_id),
            reporter=UpdateReporter(task.analysis_id, self.uplink.send),
            data=data,
        )
        self.analyses[task.analysis_id] = state
        self._by_secret[secret] = task.analysis_id
        self._started(task.analysis_id).set()
        return state

    async def _package_dir(self, task: messaging_pb2.AnalysisTask) -> Path | None:
        """The extracted package the analysis runs from, cached by sha256 in the data dir.

        A cached extraction is complete and checked by construction (see
        :mod:`fedgrpc.packages.extract`), so when the task names its sha256 and the directory
        is there, nothing is downloaded; otherwise the package is fetched with this node's
        credentials, its checksum verified and its members checked before extraction.
        """
        if not task.package_id:
            return None
        cache = self.data_dir / "packages"
        sha256 = task.package_sha256.lower()
        # Only a bare hex digest may name a cache entry: never a path from the wire.
        if _SHA256.fullmatch(sha256) and (cache / sha256).is_dir():
            return cache / sha256
        return await fetch_package(
            self.config.controller,
            cache_dir=cache,
            max_message_size=self.config.max_message_size,
            package_id=task.package_id,
            credentials=channel_credentials_for(self.config),
            token=self.config.token,
        )

    async def stop(self, analysis_id: str, reason: str = "stopped") -> None:
        state = self.analyses.get(analysis_id)
        if state is not None and state.process is not None:
            await state.process.stop(reason or "stopped")

    def mark_executing(self, state: AnalysisState) -> None:
        if not state.sdk_connected.is_set():
            state.sdk_connected.set()
            state.reporter.set_status(EXECUTING)

    def data_sources_json(self) -> str:
        return json.dumps(list(self.config.data_sources))

    # --- messages in ----------------------------------------------------------------------

    async def _deliver(self, envelope: messaging_pb2.Envelope) -> None:
        inbox = self.inbox(envelope.analysis_id)
        await receive(
            envelope, inbox, self._send_ack, lambda m: self._system(envelope.analysis_id, m)
        )

    def _send_ack(self, message: combiner_pb2.ClientMessage) -> None:
        if self.test_drop_acks > 0:
            self.test_drop_acks -= 1
            return
        self.uplink.send(message)

    def _system(self, analysis_id: str, message: StoredMessage) -> None:
        if message.category == READY_PING:
            self._spawn(self._answer_ready(analysis_id, message.sender))
        elif message.category == FINISHED:
            state = self.analyses.get(analysis_id)
            if state is not None:
                state.finished_partners.add(message.sender)

    async def _answer_ready(self, analysis_id: str, sender: str) -> None:
        # Ready means "its analysis code is running here": answer once the SDK has connected.
        await self._started(analysis_id).wait()
        await self.analyses[analysis_id].sdk_connected.wait()
        self.messenger.send_nowait(
            analysis_id=analysis_id, receiver=sender, category=READY_PONG, body=b"{}"
        )

    def _started(self, analysis_id: str) -> asyncio.Event:
        return self._started_events.setdefault(analysis_id, asyncio.Event())

    # --- resources ------------------------------------------------------------------------

    async def _ensure_server(self) -> RunningServer:
        async with self._start_lock:
            if self._server is None:
                from fedgrpc.client.node_service import start_node_service

                self._server = await start_node_service(self)
            return self._server

    def _storage_stub(self) -> messaging_pb2_grpc.StorageServiceStub:
        if self._channel is None:
            self._channel = open_channel(
                self.config.controller,
                max_message_size=self.config.max_message_size,
                credentials=channel_credentials_for(self.config),
                token=self.config.token,
            )
        return messaging_pb2_grpc.StorageServiceStub(self._channel)

    async def close(self) -> None:
        """Stop every analysis process, the node service and the controller channel."""
        # Their marks stay: the stream is gone, so a restart reports these analyses as lost.
        self._closing = True
        await asyncio.gather(
            *(s.process.stop("node stopped") for s in self.analyses.values() if s.process),
            return_exceptions=True,
        )
        self.messenger.cancel_waits()
        if self._server is not None:
            await self._server.stop(0.5)
            self._server = None
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()
            self._channel = None
