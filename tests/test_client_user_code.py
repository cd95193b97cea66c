"""How a client runs user code: plain functions in a worker thread, ``async def`` ones on the
event loop, one call at a time per client either way."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fedgrpc.client.node import Client


async def test_an_async_call_waits_for_a_cancelled_plain_call_still_running() -> None:
    client = Client(controller="127.0.0.1:1", name="site")
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def plain() -> None:
        started.set()
        release.wait(10)
        order.append("plain")

    async def coroutine() -> str:
        order.append("async")
        return "done"

    first = asyncio.ensure_future(client._call_user(plain))
    assert await asyncio.to_thread(started.wait, 10)
    first.cancel()  # the task ends; its thread cannot be stopped and keeps the lock
    second = asyncio.ensure_future(client._call_user(coroutine))
    await asyncio.sleep(0.05)  # several polls of the lock: a lockless call would run now
    assert order == []
    release.set()
    assert await asyncio.wait_for(second, 10) == "done"
    assert order == ["plain", "async"]
    assert not client._user_code_lock.locked()


async def test_an_async_callable_object_runs_on_the_loop_and_a_plain_one_in_a_thread() -> None:
    client = Client(controller="127.0.0.1:1", name="site")
    loop_thread = threading.get_ident()

    class AsyncTrain:
        async def __call__(self, value: int) -> tuple[int, int]:
            return value, threading.get_ident()

    def plain(value: int) -> tuple[int, int]:
        return value, threading.get_ident()

    assert await client._call_user(AsyncTrain(), 1) == (1, loop_thread)
    result: Any = await client._call_user(plain, 2)
    assert result[0] == 2
    assert result[1] != loop_thread
