"""The combiner's end of ``CombinerLink``: register, report, obey, and reconnect forever.

The link survives controller restarts: when the stream breaks, in-flight rounds are closed
(the controller that assigned them is gone or will re-run them), and the combiner registers
again with backoff, re-announcing the clients it still holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc

from fedgrpc.backoff import Backoff
from fedgrpc.errors import (
    PermissionDenied,
    TlsHandshakeFailed,
    Unauthenticated,
    from_rpc_error,
)
from fedgrpc.proto.network.v1 import network_pb2, network_pb2_grpc

log = logging.getLogger(__name__)

FATAL_LINK_ERRORS = (TlsHandshakeFailed, Unauthenticated, PermissionDenied)

CommandHandler = Callable[[network_pb2.ControllerCommand], None]


class ControllerLink:
    def __init__(
        self,
        *,
        channel: grpc.aio.Channel,
        registration: Callable[[], network_pb2.RegisterCombiner],
        connected_count: Callable[[], int],
        on_command: CommandHandler,
        on_lost: Callable[[str], None],
        heartbeat_interval: float,
        heartbeat_timeout: float,
        backoff: Backoff,
    ) -> None:
        self._stub = network_pb2_grpc.NetworkServiceStub(channel)
        self._registration = registration
        self._connected_count = connected_count
        self._silenced = False
        self._on_command = on_command
        self._on_lost = on_lost
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._backoff = backoff
        self._outbox: asyncio.Queue[network_pb2.CombinerReport] = asyncio.Queue()
        self.registered = asyncio.Event()
        self.combiner_id = ""

    def send(self, report: network_pb2.CombinerReport) -> None:
        self._outbox.put_nowait(report)

    async def run(self) -> None:
        """Keep a link up until cancelled."""
        attempt = 0
        while True:
            started = time.monotonic()
            reason = await self._run_once()
            self.registered.clear()
            self._on_lost(reason)
            if time.monotonic() - started > self._heartbeat_timeout:
                attempt = 0  # the link was healthy for a while: start the backoff afresh
            delay = self._backoff.delay(attempt)
            attempt += 1
            log.warning("controller link lost (%s); reconnecting in %.1fs", reason, delay)
            await asyncio.sleep(delay)

    async def _run_once(self) -> str:
        self._silenced = False
        call = self._stub.CombinerLink(self._outgoing())
        watchdog = asyncio.ensure_future(self._watch(call))
        try:
            async for command in call:
                self._last_heard = time.monotonic()
                if command.HasField("registered"):
                    self.combiner_id = command.registered.combiner_id
                    self.registered.set()
                    log.info("registered with the controller as %s", self.combiner_id)
                self._on_command(command)
            return "controller closed the link"
        except grpc.aio.AioRpcError as error:
            typed = from_rpc_error(error)
            if isinstance(typed, FATAL_LINK_ERRORS):
                # A wrong CA or certificate, a refused or revoked token: retrying cannot fix it.
                raise typed from error
            return f"{error.code().name}: {error.details()}"
        except asyncio.CancelledError:
            if not self._silenced:
                raise
            return f"no word from the controller for {self._heartbeat_timeout:g}s"
        finally:
            watchdog.cancel()
            call.cancel()

    async def _outgoing(self) -> AsyncIterator[network_pb2.CombinerReport]:
        yield network_pb2.CombinerReport(register=self._registration())
        heartbeat = asyncio.ensure_future(self._heartbeats())
        try:
            while True:
                yield await self._outbox.get()
        finally:
            heartbeat.cancel()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            beat = network_pb2.CombinerHeartbeat(connected_clients=self._connected_count())
            self.send(network_pb2.CombinerReport(heartbeat=beat))

    async def _watch(self, call: grpc.aio.StreamStreamCall) -> None:
        """Cancel the call when the controller has been silent too long (half-open TCP)."""
        self._last_heard = time.monotonic()
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            if time.monotonic() - self._last_heard > self._heartbeat_timeout:
                self._silenced = True
                call.cancel()
                return
