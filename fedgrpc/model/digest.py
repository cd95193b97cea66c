"""Hash a model stream's chunks on a worker thread while the event loop moves the next ones.

A digest costs CPU on every byte (sha256 ran at about 1 GB/s on the first benchmark host, as
fast as gRPC moves bytes on loopback; BLAKE3, the model digest, at 4.6 GB/s on the current
one), so a receiver (or sender) that hashes on the event loop, or waits for each chunk's hash
before taking the next, slows its transfer. :class:`DigestBehind` queues each chunk's digest
call to one thread per large stream (``blake3`` and ``hashlib`` drop the GIL while they hash)
and waits only at the end. The queue
holds references to chunks the caller keeps anyway (views of the receive buffer, or the
received chunks themselves), so it costs no memory of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable

Digest = Callable[[], object]

# Below this size a chunk is hashed in place while no worker runs: a thread costs more.
_THREAD_BYTES = 256 * 1024


class DigestBehind:
    """Runs a stream's digest calls in order: small ones inline, then, from the first large
    chunk on, all of them on one worker thread. Call :meth:`done` to wait for them, or
    :meth:`close` to abandon the stream (the worker then exits)."""

    def __init__(self) -> None:
        self.offload = True  # False: a small stream, every chunk hashed inline
        self._jobs: queue.SimpleQueue[Digest | None] | None = None
        self._finished: asyncio.Future[None] | None = None

    def then(self, digest: Digest, size: int) -> None:
        """Hash one chunk after the ones before it."""
        if self._jobs is None and (not self.offload or size < _THREAD_BYTES):
            digest()
            return
        if self._jobs is None:
            self._start()
        assert self._jobs is not None  # for mypy: _start set it
        self._jobs.put(digest)

    async def done(self) -> None:
        """Wait until every chunk passed to :meth:`then` is hashed; re-raise a failed digest."""
        finished = self._finished
        self.close()
        if finished is not None:
            await asyncio.shield(finished)

    def close(self) -> None:
        """Let the worker finish what it has and exit; nothing more will be queued."""
        if self._jobs is not None:
            self._jobs.put(None)
            self._jobs = None

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._jobs = queue.SimpleQueue()
        self._finished = loop.create_future()
        threading.Thread(
            target=_work,
            args=(self._jobs, loop, self._finished),
            name="fedgrpc-digest",
            daemon=True,
        ).start()


def _work(
    jobs: queue.SimpleQueue[Digest | None],
    loop: asyncio.AbstractEventLoop,
    finished: asyncio.Future[None],
) -> None:
    error: BaseException | None = None
    while (job := jobs.get()) is not None:
        if error is None:
            try:
                job()
            except BaseException as exc:
                error = exc
    with contextlib.suppress(RuntimeError):  # the loop closed after the stream was abandoned
        loop.call_soon_threadsafe(_settle, finished, error)


def _settle(finished: asyncio.Future[None], error: BaseException | None) -> None:
    if finished.done():
        return
    if error is None:
        finished.set_result(None)
    else:
        finished.set_exception(error)
