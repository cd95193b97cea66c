"""Models on the combiner link: partial means checked on arrival, and the small global model
sent inline with each assignment.

A partial arrives either through ``ModelService.Upload`` (large), stored for the round under a
``partial-`` id, or inline in the combiner's ``RoundResult`` (up to the link's
``inline_model_bytes``), kept in memory for the round: writing it to the store and reading it
back cost a file and two worker-thread hops on the critical path of every small-model round.
Either way the controller keeps the digest it checked, so the commit of a single-combiner round
need not hash the model again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedgrpc.controller.records import model_record_digest
from fedgrpc.errors import FedgrpcError
from fedgrpc.model.chunking import check_inline, model_digest
from fedgrpc.modelstore import StoredModel
from fedgrpc.proto.network.v1 import network_pb2

if TYPE_CHECKING:
    from fedgrpc.controller.network import Network

log = logging.getLogger(__name__)


def store_partial(
    network: Network, data: bytes | memoryview, verified_digest: str | None
) -> tuple[str, StoredModel]:
    """Store a partial mean (blocking); its new id and stored record."""
    model_id = f"partial-{uuid.uuid4().hex}"
    # A partial lives for one round and a crash restarts the round, so it skips fsync.
    stored = network.models.put_bytes(
        model_id, data, durable=False, verified_digest=verified_digest
    )
    network.partial_digests[model_id] = stored.digest
    return model_id, stored


@dataclass(frozen=True, kw_only=True)
class InlinePartial:
    """A partial a combiner sent inline, checked: its bytes and their digest."""

    data: bytes
    digest: str


def check_inline_partial(network: Network, partial: bytes, claimed_digest: str) -> InlinePartial:
    """A partial sent inline, its size and digest checked as an upload's would be."""
    limit = network.config.inline_model_bytes
    actual = check_inline(partial, claimed_digest, limit=limit, what="inline partial")
    return InlinePartial(data=partial, digest=actual)


def take_inline_partials(
    network: Network, results: Mapping[str, network_pb2.RoundResult]
) -> dict[str, InlinePartial]:
    """The checked inline partials among ``results``, by combiner. A partial that fails its
    checks turns its result into an error, so the round goes on without it. Hashed on the
    event loop: at most ``inline_model_bytes`` (1 MiB by default, 0.2 ms of BLAKE3)."""
    checked: dict[str, InlinePartial] = {}
    for name, result in results.items():
        partial = result.partial  # each read of a bytes field copies it: read it once
        if not partial:
            continue
        try:
            checked[name] = check_inline_partial(network, partial, result.partial_digest)
        except FedgrpcError as exc:
            log.warning("combiner %s: %s", name, exc)
            result.error, result.model_id = str(exc), ""
        result.ClearField("partial")
    return checked


class InlineModel:
    """The session's global model bytes, kept while small enough to ride on combiner links.

    After a commit the new model is remembered as it was stored; otherwise (first round, a
    restarted controller) it is read once from the store. Larger models are remembered as
    "not inline" so no round reads the store for them.
    """

    def __init__(self, network: Network) -> None:
        self._network = network
        self._model_id = ""
        self._data: bytes | None = None
        self._digest = ""

    def remember(self, model_id: str, data: bytes, digest: str) -> None:
        small = len(data) <= self._network.config.inline_model_bytes
        self._model_id, self._data, self._digest = model_id, data if small else None, digest

    def held(self, model_id: str) -> bytes | None:
        """The bytes of ``model_id`` if they are held here now (no store read)."""
        return self._data if model_id == self._model_id else None

    async def get(self, model_id: str) -> tuple[bytes, str] | None:
        """(bytes, digest) of ``model_id`` when it may go inline, else None."""
        if self._network.config.inline_model_bytes == 0:
            return None
        if model_id != self._model_id:
            self._data, self._digest = await asyncio.to_thread(self._read, model_id)
            self._model_id = model_id
        return (self._data, self._digest) if self._data is not None else None

    def _read(self, model_id: str) -> tuple[bytes | None, str]:
        try:
            record = self._network.store.models.get(model_id)
            if int(record["size"]) > self._network.config.inline_model_bytes:
                return None, ""
            data = self._network.models.get_bytes(model_id)
            return data, model_record_digest(record) or model_digest(data)
        except FedgrpcError as exc:
            # Not inline, then: the combiner's download fails the round with the same error.
            log.warning("model %s cannot go inline: %s", model_id, exc)
            return None, ""
