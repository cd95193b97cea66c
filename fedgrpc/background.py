"""Fire-and-forget asyncio tasks that neither vanish nor fail in silence.

The event loop holds tasks only weakly, so a task nobody references can be collected before it
ends. And an exception in a task nobody awaits surfaces, if ever, as "Task exception was never
retrieved" whenever the task happens to be collected, long after the fact and with no hint of
what it cost. Here each task is referenced until it ends, and its failure is logged at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

log = logging.getLogger(__name__)


class BackgroundTasks:
    def __init__(self, what: str) -> None:
        self._what = what  # names the owner in the log line of a failure
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[None]]:
        return iter(list(self._tasks))  # a snapshot: tasks end while callers iterate

    async def cancel_all(self) -> None:
        """Cancel every task still running and wait until all have ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: background task %s failed", self._what, task.get_name(), exc_info=exc)
