"""The combiner's cache of global models, fetched from the controller once per id."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class CachedModel:
    model_id: str
    data: bytes
    sha256: str


Fetch = Callable[[str], Awaitable[CachedModel]]


class ModelCache:
    """Keeps the last few models; concurrent requests for one id share a single download."""

    # One model: a round's global model is also what the next round's clients download, so an
    # older one is never asked for again (each cached model costs its full size in memory).
    def __init__(self, fetch: Fetch, *, keep: int = 1) -> None:
        self._fetch = fetch
        self._keep = keep
        self._models: OrderedDict[str, asyncio.Task[CachedModel]] = OrderedDict()

    async def get(self, model_id: str) -> CachedModel:
        task = self._models.get(model_id)
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.ensure_future(self._fetch(model_id))
            self._models[model_id] = task
        self._models.move_to_end(model_id)
        while len(self._models) > self._keep:
            _, evicted = self._models.popitem(last=False)
            if not evicted.done():
                evicted.cancel()
        return await asyncio.shield(task)

    def clear(self) -> None:
        for task in self._models.values():
            task.cancel()
        self._models.clear()
