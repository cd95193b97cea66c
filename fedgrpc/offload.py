"""Run model-sized work on the event loop when it is small, in a worker thread when it is not.

A worker-thread hop costs about 0.25 ms of CPU and a wake-up of both the thread and the event
loop (measured on the 2-core benchmark machine: a gRPC round trip took 0.23-0.29 ms of client
CPU, 0.50-0.55 ms with one ``asyncio.to_thread`` in it). Parsing, checking, adding or
serializing a model costs about 0.5 ms per MB, so below a couple of MB the hop costs more
than the work it would move off the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Work on models below this many bytes stays on the event loop.
OFFLOAD_BYTES = 2 * 1024 * 1024


async def off_loop_if_large(size: int, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)``: in a worker thread when ``size`` (bytes of model the
    call works on) is at least :data:`OFFLOAD_BYTES`, else right here on the loop."""
    if size < OFFLOAD_BYTES:
        return function(*args, **kwargs)
    return await asyncio.to_thread(function, *args, **kwargs)
