"""A node's inbox for one analysis: messages received from other nodes, de-duplicated by id.

The broker delivers at least once; storing by ``message_id`` (and remembering ids even after
the message is deleted) turns that into exactly once for the analysis. Waiters block on one
``asyncio.Condition`` that every stored message notifies, so nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fedgrpc.errors import InvalidArgument

UNREAD = "unread"
READ = "read"
STATUSES = (UNREAD, READ)
# Categories the node itself uses (ready checks, finish signals); never shown to the analysis.
SYSTEM_PREFIX = "__fedgrpc."


@dataclass
class StoredMessage:
    id: str
    sender: str
    recipient: str
    category: str
    body: bytes
    created_at: float = field(default_factory=time.time)
    status: str = UNREAD

    @property
    def is_system(self) -> bool:
        return self.category.startswith(SYSTEM_PREFIX)


class Inbox:
    """Messages of one analysis on this node, in arrival order."""

    def __init__(self) -> None:
        self._messages: dict[str, StoredMessage] = {}
        self._seen: set[str] = set()
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._messages)

    async def store(self, message: StoredMessage) -> bool:
        """Keep ``message`` unless its id was seen before; True when it is new."""
        async with self._changed:
            if message.id in self._seen:
                return False
            self._seen.add(message.id)
            self._messages[message.id] = message
            self._changed.notify_all()
            return True

    def select(self, status: str) -> list[StoredMessage]:
        _check_status(status, allow_all=True)
        return [
            m for m in self._messages.values() if not m.is_system and status in ("all", m.status)
        ]

    def delete(self, message_ids: Iterable[str]) -> int:
        return sum(self._messages.pop(i, None) is not None for i in set(message_ids))

    def clear(self, status: str, min_age: float | None = None) -> int:
        _check_status(status, allow_all=True)
        cutoff = time.time() - (min_age or 0.0)
        doomed = [
            m.id
            for m in self.select(status)
            if min_age is None or min_age <= 0 or m.created_at < cutoff
        ]
        return self.delete(doomed)

    async def wait_for(
        self,
        senders: Sequence[str],
        category: str,
        *,
        message_id: str = "",
        timeout: float | None = None,
    ) -> dict[str, list[StoredMessage]]:
        """Messages of ``category`` per sender, once every sender has one or at the timeout.

        Without ``message_id`` the wait is for an *unread* message from every sender, so an
        iterative analysis awaiting round n does not wake up on round n-1's (already read)
        answers; the result then lists every matching message, oldest first, so FLAME's
        ``[sender][-1]`` is the newest. Senders with nothing by then are absent from the
        result. Returned messages are marked read.
        """

        def arrived(sender: str) -> bool:
            matches = self._matching(sender, category, message_id)
            return any(message_id or m.status == UNREAD for m in matches)

        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: all(arrived(s) for s in senders)), timeout
                )
            found = {
                s: self._matching(s, category, message_id) if arrived(s) else [] for s in senders
            }
        for messages in found.values():
            for message in messages:
                message.status = READ
        return {sender: messages for sender, messages in found.items() if messages}

    def _matching(self, sender: str, category: str, message_id: str) -> list[StoredMessage]:
        return [
            m
            for m in self._messages.values()
            if m.sender == sender
            and m.category == category
            and (not message_id or m.id == message_id)
        ]


def _check_status(status: str, *, allow_all: bool) -> None:
    allowed = (*STATUSES, "all") if allow_all else STATUSES
    if status not in allowed:
        raise InvalidArgument(f"status must be one of {', '.join(allowed)}, got {status!r}")
