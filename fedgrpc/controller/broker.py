"""The message broker between analysis nodes: persist, then route; re-send until acknowledged.

Every envelope is validated and written to the statestore (status ``pending``) before it is
routed to the recipient's combiner. A pending message is re-sent with exponential backoff while
its recipient is online, pushed again in arrival order when the recipient (re)connects, and
expires after its time-to-live with a negative receipt to the sender. Acks mark it delivered
(idempotently: a duplicate ack just repeats the receipt). Delivery is at least once; the
receiving node de-duplicates by message id.

All broker work runs on one queue so messages are stored and routed in arrival order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from fedgrpc.config import ControllerConfig
from fedgrpc.controller.registry import CombinerLinkState, CombinerRegistry
from fedgrpc.errors import AlreadyExists, FedgrpcError, NotFound
from fedgrpc.proto.messaging.v1 import messaging_pb2 as mpb
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.statestore import Record, StateStore, now_iso
from fedgrpc.statestore.analyses import TERMINAL_STATUSES

log = logging.getLogger(__name__)

MAX_BODY = 2 * 1024 * 1024  # FLAME's "around 2 MB"; nodes refuse larger bodies before sending
MAX_RETRY_SECONDS = 30.0


@dataclass(eq=False)
class _Pending:
    """A stored, unacknowledged message and when to try it next."""

    envelope: mpb.Envelope
    expires: float  # time.monotonic() deadline
    delay: float
    next_try: float = math.inf  # inf: wait for the recipient to (re)connect


@dataclass(eq=False)
class _Outbox:
    """One recipient's pending messages, in arrival order (dicts keep insertion order)."""

    messages: dict[str, _Pending] = field(default_factory=dict)


class Broker:
    def __init__(
        self, *, config: ControllerConfig, store: StateStore, registry: CombinerRegistry
    ) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self._outboxes: dict[str, _Outbox] = {}
        self._work: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load what was pending before a restart; its recipients get it when they connect."""
        records = await asyncio.to_thread(
            self.store.messages.collection.list,
            {"status": "pending"},
            sort_key="created_at",
            sort_order="asc",
        )
        for record in records:
            self._remember(_envelope_of(record), _expires_in(record))
        self._tasks = [
            asyncio.ensure_future(self._worker()),
            asyncio.ensure_future(self._pacer()),
        ]

    async def stop(self) -> None:
        self._work.put_nowait(None)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until every report queued so far has been handled (tests use it)."""
        done = asyncio.Event()

        async def mark() -> None:
            done.set()

        self._work.put_nowait(mark)
        await done.wait()

    # --- reports from combiners (called synchronously from the link handler) ------------

    def submit(self, envelope: mpb.Envelope) -> None:
        self._work.put_nowait(lambda: self._accept(envelope))

    def acked(self, ack: mpb.Ack) -> None:
        self._work.put_nowait(lambda: self._acknowledge(ack))

    def client_online(self, name: str) -> None:
        """Push everything pending for ``name`` now, in order, with a fresh backoff."""
        outbox = self._outboxes.get(name)
        if outbox is None:
            return
        for pending in outbox.messages.values():
            pending.delay = self.config.message_retry_seconds
            self._route(pending)

    def client_offline(self, name: str) -> None:
        outbox = self._outboxes.get(name)
        for pending in outbox.messages.values() if outbox else ():
            pending.next_try = math.inf
        self._wake.set()

    def analysis_ended(self, analysis_id: str) -> None:
        """Its pending messages will never be read: expire them now."""
        self._work.put_nowait(lambda: self._expire_analysis(analysis_id))

    # --- the work ------------------------------------------------------------------------

    async def _worker(self) -> None:
        while (job := await self._work.get()) is not None:
            try:
                await job()
            except Exception:  # one bad message must not stop the ones behind it
                log.exception("broker step failed")

    async def _accept(self, envelope: mpb.Envelope) -> None:
        problem = await asyncio.to_thread(self._refusal, envelope)
        if problem:
            self._receipt(envelope.sender, envelope, delivered=False, error=problem)
            return
        ttl = envelope.ttl_seconds if envelope.ttl_seconds > 0 else self.config.message_ttl_seconds
        try:
            await asyncio.to_thread(self._store, envelope, ttl)
        except AlreadyExists:
            await self._duplicate(envelope)  # the sender retried a message we already have
            return
        self._route(self._remember(envelope, ttl))

    def _refusal(self, envelope: mpb.Envelope) -> str:
        if not envelope.message_id or len(envelope.message_id) > 128:
            return "message_id must be 1 to 128 characters"
        if len(envelope.body) > MAX_BODY:
            return f"message body is {len(envelope.body)} bytes; at most {MAX_BODY} (2 MB)"
        try:
            analysis = self.store.analyses.get(envelope.analysis_id)
        except (NotFound, FedgrpcError):
            return f"analysis '{envelope.analysis_id}' not found"
        if analysis["status"] in TERMINAL_STATUSES:
            return f"analysis '{envelope.analysis_id}' has ended ({analysis['status']})"
        nodes = {node["node_id"] for node in analysis["nodes"]}
        for role, name in (("sender", envelope.sender), ("recipient", envelope.recipient)):
            if name not in nodes:
                return f"{role} '{name}' is not a participant of analysis {envelope.analysis_id}"
        return ""

    def _store(self, envelope: mpb.Envelope, ttl: float) -> Record:
        expires_at = datetime.now(timezone.utc) + timedelta(seconds=ttl)
        return self.store.messages.add(
            message_id=envelope.message_id,
            analysis_id=envelope.analysis_id,
            sender=envelope.sender,
            recipient=envelope.recipient,
            sequence=envelope.sequence,
            expires_at=expires_at.isoformat(timespec="microseconds"),
            category=envelope.category,
            envelope=base64.b64encode(envelope.SerializeToString()).decode(),
        )

    async def _duplicate(self, envelope: mpb.Envelope) -> None:
        record = await asyncio.to_thread(self.store.messages.get, envelope.message_id)
        if record["sender"] != envelope.sender:
            error = "message_id is already used by another sender"
            self._receipt(envelope.sender, envelope, delivered=False, error=error)
        elif record["status"] == "delivered":
            self._receipt(envelope.sender, envelope, delivered=True)
        elif record["status"] == "expired":
            self._receipt(envelope.sender, envelope, delivered=False, error="expired")

    async def _acknowledge(self, ack: mpb.Ack) -> None:
        try:
            record = await asyncio.to_thread(self.store.messages.get, ack.message_id)
        except NotFound:
            return
        if record["recipient"] != ack.recipient:
            log.warning(
                "ack for %s from %s, not its recipient; ignored", ack.message_id, ack.recipient
            )
            return
        if record["status"] == "pending":
            await asyncio.to_thread(
                self.store.messages.mark, ack.message_id, "delivered", delivered_at=now_iso()
            )
            record = {**record, "status": "delivered"}
        self._forget(record["recipient"], ack.message_id)
        if record["status"] == "delivered":  # a duplicate ack repeats the receipt: harmless
            envelope = _envelope_of(record)
            self._receipt(envelope.sender, envelope, delivered=True)

    async def _expire(self, pending: _Pending, reason: str) -> None:
        envelope = pending.envelope
        self._forget(envelope.recipient, envelope.message_id)
        marked = await asyncio.to_thread(
            self.store.messages.mark, envelope.message_id, "expired", error=reason
        )
        if marked is not None:
            self._receipt(envelope.sender, envelope, delivered=False, error=reason)

    async def _expire_analysis(self, analysis_id: str) -> None:
        for outbox in list(self._outboxes.values()):
            for pending in list(outbox.messages.values()):
                if pending.envelope.analysis_id == analysis_id:
                    await self._expire(pending, f"expired: analysis {analysis_id} ended")

    # --- routing and timing ---------------------------------------------------------------

    def _remember(self, envelope: mpb.Envelope, ttl: float) -> _Pending:
        pending = _Pending(
            envelope=envelope,
            expires=time.monotonic() + ttl,
            delay=self.config.message_retry_seconds,
        )
        outbox = self._outboxes.setdefault(envelope.recipient, _Outbox())
        outbox.messages[envelope.message_id] = pending
        self._wake.set()
        return pending

    def _forget(self, recipient: str, message_id: str) -> None:
        outbox = self._outboxes.get(recipient)
        if outbox is not None:
            outbox.messages.pop(message_id, None)
            if not outbox.messages:
                del self._outboxes[recipient]

    def _route(self, pending: _Pending) -> None:
        link = self._link_of(pending.envelope.recipient)
        if link is None:
            pending.next_try = math.inf
            return
        link.send(network_pb2.ControllerCommand(deliver=pending.envelope))
        pending.next_try = time.monotonic() + pending.delay
        pending.delay = min(pending.delay * 2, MAX_RETRY_SECONDS)
        self._wake.set()

    def _receipt(
        self, to: str, envelope: mpb.Envelope, *, delivered: bool, error: str = ""
    ) -> None:
        receipt = mpb.Receipt(
            message_id=envelope.message_id,
            analysis_id=envelope.analysis_id,
            recipient=envelope.recipient,
            sender=to,
            delivered=delivered,
            error=error,
        )
        link = self._link_of(to)
        if link is not None:  # an offline sender learns nothing; its own wait times out
            link.send(network_pb2.ControllerCommand(receipt=receipt))

    def _link_of(self, client: str) -> CombinerLinkState | None:
        return self.registry.link_of_client(client)

    async def _pacer(self) -> None:
        """Re-send due messages and expire old ones; sleeps until the next deadline or a wake."""
        while True:
            now = time.monotonic()
            deadline = math.inf
            for outbox in list(self._outboxes.values()):
                for pending in list(outbox.messages.values()):
                    if pending.expires <= now:
                        self._queue_expiry(pending)
                        continue
                    if pending.next_try <= now:
                        self._route(pending)
                    deadline = min(deadline, pending.expires, pending.next_try)
            self._wake.clear()
            timeout = None if deadline == math.inf else max(deadline - time.monotonic(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _queue_expiry(self, pending: _Pending) -> None:
        pending.expires = pending.next_try = math.inf  # queued once; the worker forgets it
        self._work.put_nowait(lambda: self._expire(pending, "expired: time-to-live ended"))


def _envelope_of(record: Record) -> mpb.Envelope:
    return mpb.Envelope.FromString(base64.b64decode(record["envelope"]))


def _expires_in(record: Record) -> float:
    expires_at = datetime.fromisoformat(str(record["expires_at"]))
    return (expires_at - datetime.now(timezone.utc)).total_seconds()
