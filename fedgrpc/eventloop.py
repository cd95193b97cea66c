"""The event loop the daemons and clients run on: uvloop where it is installed, else asyncio's.

Why: every gRPC message wakes grpc.aio's completion-queue thread, which wakes the event loop,
which runs the message's callbacks; in a round of a tiny model that machinery is most of each
process's work. uvloop (libuv, in C) does a loop iteration and a cross-thread wake-up for less
CPU than asyncio's pure-Python loop: 400-round benchmark runs alternating with asyncio's loop
took 6 % less time per round (``bench/RESULTS.md``, session 13).

``FEDGRPC_EVENT_LOOP=asyncio`` runs on asyncio's own loop instead (e.g. to rule uvloop out
while debugging); ``uvloop`` insists on it; ``auto`` (the default) takes uvloop when installed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fedgrpc.errors import InvalidArgument

ENVIRONMENT_VARIABLE = "FEDGRPC_EVENT_LOOP"
_CHOICES = ("auto", "uvloop", "asyncio")

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory() -> LoopFactory:
    """The factory of the loop chosen by ``FEDGRPC_EVENT_LOOP`` (see the module docstring)."""
    choice = os.environ.get(ENVIRONMENT_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise InvalidArgument(
            f"{ENVIRONMENT_VARIABLE} must be one of {', '.join(_CHOICES)}, got {choice!r}"
        )
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise InvalidArgument(
                f"{ENVIRONMENT_VARIABLE}=uvloop, but uvloop is not installed "
                "(pip install uvloop; it does not support Windows)"
            ) from None
        return asyncio.new_event_loop
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    try:
        factory = loop_factory()
    except BaseException:
        main.close()  # never awaited: no "coroutine was never awaited" warning on top
        raise
    runner_type = getattr(asyncio, "Runner", None)  # Python 3.11+
    if runner_type is not None:
        with runner_type(loop_factory=factory) as runner:
            result: T = runner.run(main)
            return result
    asyncio.set_event_loop_policy(_FactoryPolicy(factory))  # 3.10: no loop factory yet
    return asyncio.run(main)


class _FactoryPolicy(asyncio.DefaultEventLoopPolicy):
    def __init__(self, factory: LoopFactory) -> None:
        super().__init__()
        self._factory = factory

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return self._factory()
