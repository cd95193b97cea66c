"""The combiner's cache of global models, fetched from the controller once per id."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class CachedModel:
    model_id: str
    data: bytes | memoryview
    digest: str


Fetch = Callable[[str], Awaitable[CachedModel]]

# Models from this size on leave the cache once every expected download of them is done.
RELEASE_AFTER_DOWNLOADS_BYTES = 32 * 1024 * 1024


class ModelCache:
    """Keeps the last few models; concurrent requests for one id share a single download.

    It also remembers the last payload this combiner itself uploaded (its partial aggregate),
    by digest: with one combiner and FedAvg the controller's next global model is that very
    payload, byte for byte, so a download whose header announces its digest can stop there
    and reuse it (:meth:`by_digest`) instead of moving the whole model back over the network.
    """

    # One model: a round's global model is also what the next round's clients download, so an
    # older one is never asked for again (each cached model costs its full size in memory).
    def __init__(self, fetch: Fetch, *, keep: int = 1) -> None:
        self._fetch = fetch
        self._keep = keep
        self._models: OrderedDict[str, asyncio.Future[CachedModel]] = OrderedDict()
        self._uploaded: tuple[str, bytes | memoryview] | None = None
        self._expected: dict[str, int] = {}  # model id -> downloads still to come

    async def get(self, model_id: str) -> CachedModel:
        task = self._models.get(model_id)
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.ensure_future(self._fetch(model_id))
            self._models[model_id] = task
        self._models.move_to_end(model_id)
        self._evict()
        return await asyncio.shield(task)

    def put(self, model: CachedModel) -> None:
        """Cache a model that arrived by other means (inline on the controller link)."""
        future: asyncio.Future[CachedModel] = asyncio.get_running_loop().create_future()
        future.set_result(model)
        self._models[model.model_id] = future
        self._models.move_to_end(model.model_id)
        self._evict()

    def _evict(self) -> None:
        while len(self._models) > self._keep:
            _, evicted = self._models.popitem(last=False)
            if not evicted.done():
                evicted.cancel()

    def expect_downloads(self, model_id: str, count: int) -> None:
        """``count`` more clients were sent a train task on ``model_id`` (see
        :meth:`downloaded`)."""
        self._expected[model_id] = self._expected.get(model_id, 0) + count

    def downloaded(self, model: CachedModel) -> None:
        """One download of ``model`` ended (served or not).

        Once every client sent a train task on a large model has fetched it, the cache lets it
        go: the rest of the round (receiving and folding updates) then runs without a
        model-sized buffer nobody reads. A client that asks again later (a retry) gets it
        fetched anew from the controller. Downloads nobody announced (validation passes, whose
        model is usually the next round's) never release anything; small models stay too.
        """
        if model.model_id not in self._expected:
            return
        left = self._expected[model.model_id] - 1
        if left > 0:
            self._expected[model.model_id] = left
            return
        self._expected.pop(model.model_id, None)
        if len(model.data) >= RELEASE_AFTER_DOWNLOADS_BYTES:
            self.forget(model.model_id)

    def forget(self, model_id: str) -> None:
        """Drop one model (a later :meth:`get` fetches it again)."""
        task = self._models.pop(model_id, None)
        if task is not None and not task.done():
            task.cancel()

    def remember_upload(self, data: bytes | memoryview, digest: str) -> None:
        """Keep the payload just uploaded (one at most) until a download reuses it."""
        self._uploaded = (digest, data)

    def by_digest(self, digest: str) -> bytes | memoryview | None:
        """The remembered upload if it has this digest. Either way it is forgotten here: a
        match is then held once, by the cache entry reusing it, and a miss means the next
        model is another one (several combiners, another aggregator), so it is obsolete."""
        uploaded, self._uploaded = self._uploaded, None
        return uploaded[1] if uploaded is not None and uploaded[0] == digest else None

    def clear(self) -> None:
        for task in self._models.values():
            task.cancel()
        self._models.clear()
        self._uploaded = None
        self._expected.clear()
