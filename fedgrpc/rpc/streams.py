"""Server side of a long-lived bidirectional stream with heartbeats.

Used for both ``CombinerService.Connect`` (a client on a combiner) and
``NetworkService.CombinerLink`` (a combiner on the controller): messages to the peer are
queued on its outbox, a reader task handles what the peer sends, and a pacer sends heartbeats
and ends the stream when the peer has been silent for longer than the timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from fedgrpc.errors import InvalidArgument, Unavailable

Out = TypeVar("Out")
In = TypeVar("In")

SILENCE_PREFIX = "no heartbeat"

log = logging.getLogger(__name__)


@dataclass(eq=False)
class StreamPeer(Generic[Out]):
    """The far end of one stream. ``None`` in the outbox ends the stream."""

    name: str
    outbox: asyncio.Queue[Out | None] = field(default_factory=asyncio.Queue)
    last_seen: float = field(default_factory=time.monotonic)
    close_reason: str = ""
    # Id (jti) of the token the peer opened the stream with, if auth is on: revoking that
    # token closes the stream at once instead of at the next call.
    token_id: str = ""

    def send(self, message: Out) -> None:
        self.outbox.put_nowait(message)

    def close(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason
        self.outbox.put_nowait(None)

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self.last_seen


async def first_message(requests: AsyncIterator[In], field: str, what: str) -> Any:
    """The ``field`` of a stream's first message, which must carry it (e.g. a hello)."""
    try:
        first: Any = await requests.__anext__()
    except StopAsyncIteration:
        raise InvalidArgument(f"stream closed before the first message ({what})") from None
    if not first.HasField(field):
        raise InvalidArgument(f"the first message on this stream must be {what}")
    return getattr(first, field)


Pace = Callable[[], tuple[float, float]]
"""The heartbeat interval and silence timeout of a stream, asked again before every beat."""


async def pump(
    peer: StreamPeer[Out],
    requests: AsyncIterator[In],
    on_message: Callable[[In], None],
    *,
    heartbeat: Callable[[float, float], Out],
    pace: Pace,
) -> AsyncIterator[Out]:
    """Yield the peer's outbox until it closes; read and pace the stream meanwhile.

    ``heartbeat(interval, timeout)`` builds each beat, so a beat can tell the peer a new pace.
    """
    reader = asyncio.ensure_future(_read(peer, requests, on_message))
    pacer = asyncio.ensure_future(_pace(peer, heartbeat, pace))
    try:
        while (message := await peer.outbox.get()) is not None:
            yield message
        if peer.close_reason.startswith(SILENCE_PREFIX):
            raise Unavailable(peer.close_reason)
    finally:
        reader.cancel()
        pacer.cancel()


async def _read(
    peer: StreamPeer[Out], requests: AsyncIterator[In], on_message: Callable[[In], None]
) -> None:
    try:
        async for message in requests:
            peer.touch()
            on_message(message)
        peer.close("peer closed the stream")
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
        peer.close(f"stream broke: {error}")
    except Exception:  # a bug in a handler must end this stream, not leave it deaf
        log.exception("handling a message from %s failed", peer.name)
        peer.close("internal error while handling a message")


async def _pace(
    peer: StreamPeer[Out], heartbeat: Callable[[float, float], Out], pace: Pace
) -> None:
    interval, timeout = pace()
    # The peer may still be beating at the slowest pace it was told: never enforce less.
    enforced = timeout
    while True:
        await asyncio.sleep(interval)
        if peer.silent_for() > enforced:
            peer.close(f"{SILENCE_PREFIX} from {peer.name} for {enforced:g}s")
            return
        interval, timeout = pace()
        enforced = max(enforced, timeout)
        peer.send(heartbeat(interval, timeout))


def fixed_pace(interval: float, timeout: float) -> Pace:
    """A pace that never changes."""
    return lambda: (interval, timeout)


def close_streams_of_token(peers: Iterable[StreamPeer[Any]], token_id: str) -> int:
    """Close every stream opened with ``token_id`` (just revoked); how many were closed."""
    closed = [peer for peer in peers if token_id and peer.token_id == token_id]
    for peer in closed:
        peer.close(f"token {token_id} was revoked")
    return len(closed)
