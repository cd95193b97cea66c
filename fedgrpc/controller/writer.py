"""Ordered, non-blocking statestore writes from the event loop.

Link handlers are synchronous callbacks; they queue writes here. One worker runs them in a
thread, in order, so "client connected" can never land after the "disconnected" that followed
it, and a thousand connecting clients do not spawn a thousand threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class StateWriter:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Callable[[], Any] | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.ensure_future(self._run())

    def submit(self, write: Callable[[], Any]) -> None:
        self._queue.put_nowait(write)

    async def flush(self) -> None:
        """Wait until everything submitted so far is written."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self.submit(lambda: loop.call_soon_threadsafe(done.set_result, None))
        await done

    async def _run(self) -> None:
        while (write := await self._queue.get()) is not None:
            try:
                await asyncio.to_thread(write)
            except Exception:  # one bad write must not stop the ones behind it
                log.exception("statestore write failed")

    async def stop(self) -> None:
        if self._worker is not None:
            self._queue.put_nowait(None)
            await asyncio.gather(self._worker, return_exceptions=True)
