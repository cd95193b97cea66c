"""The model store contract: streamed, verified, all-or-nothing storage of model blobs by id."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType

from fedgrpc.errors import InvalidArgument
from fedgrpc.model.chunking import (
    BLAKE3,
    DEFAULT_CHUNK_SIZE,
    Buffer,
    DigestAlgorithm,
    StreamVerifier,
    iter_chunks,
)

# Also what keeps ids safe as file names: no separators, no "..", no hidden or temp names.
_MODEL_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_MAX_ID_SHOWN = 80


@dataclass(frozen=True, kw_only=True)
class StoredModel:
    """What a successful put stored."""

    model_id: str
    size: int
    # Hex digest in the put's algorithm: BLAKE3 for models, SHA-256 where the caller asked.
    digest: str


def validate_model_id(model_id: object) -> str:
    """``model_id`` if it is 1-128 chars of ``[A-Za-z0-9._-]`` not starting with '.'."""
    if isinstance(model_id, str) and _MODEL_ID.fullmatch(model_id):
        return model_id
    shown = repr(model_id)
    if len(shown) > _MAX_ID_SHOWN:
        shown = f"{shown[:_MAX_ID_SHOWN]}... ({len(str(model_id))} chars)"
    raise InvalidArgument(
        f"invalid model id {shown}: expected 1-128 characters of A-Z a-z 0-9 . _ -, "
        f"not starting with '.'"
    )


class ModelStore(ABC):
    """Model blobs by id. A put is all-or-nothing: until it has fully succeeded (size, limit
    and checksum verified, data durable) the id does not exist, and a failed put leaves nothing.

    Implementations are safe to share between threads.
    """

    max_size: int | None

    @abstractmethod
    def put(
        self,
        model_id: str,
        chunks: Iterable[Buffer],
        *,
        expected_size: int | None = None,
        expected_digest: str | None = None,
        durable: bool = True,
        verified_digest: str | None = None,
        algorithm: DigestAlgorithm = BLAKE3,
    ) -> StoredModel:
        """Store a streamed model under a new id.

        ``durable=False`` may skip forcing the data to stable storage (fsync): for scratch
        models that are deleted soon and need not survive a crash, e.g. a round's partials.
        ``verified_digest``: the caller has just hashed exactly these bytes; it is recorded
        instead of hashing them again (sizes and limits are still checked). Digests are in
        ``algorithm``: BLAKE3 for models, SHA-256 for packages and stored objects.

        Raises InvalidArgument (bad id), AlreadyExists, PayloadTooLarge (over ``max_size`` or
        ``expected_size``), TruncatedStream, ChecksumMismatch; an exception from ``chunks``
        itself propagates unchanged. In every failure case nothing is stored.
        """

    def _verifier(
        self,
        *,
        expected_size: int | None,
        expected_digest: str | None,
        verified_digest: str | None,
        algorithm: DigestAlgorithm,
    ) -> StreamVerifier:
        """The checks of one put under this store's size limit; PayloadTooLarge here already
        when the announced size is over it, before a chunk is read."""
        return StreamVerifier(
            expected_size=expected_size,
            expected_digest=expected_digest,
            max_size=self.max_size,
            known_digest=verified_digest,
            algorithm=algorithm,
        )

    def put_bytes(
        self,
        model_id: str,
        data: Buffer,
        *,
        durable: bool = True,
        verified_digest: str | None = None,
        algorithm: DigestAlgorithm = BLAKE3,
    ) -> StoredModel:
        """Store an in-memory model.

        ``verified_digest`` is the digest of ``data`` as the caller has just checked it (e.g.
        a received upload): it is recorded as it is instead of hashing the bytes again.
        """
        return self.put(
            model_id,
            iter_chunks(data),
            expected_size=memoryview(data).nbytes,
            durable=durable,
            verified_digest=verified_digest,
            algorithm=algorithm,
        )

    @abstractmethod
    def get(self, model_id: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The model's bytes in chunks of ``chunk_size`` (the last may be shorter).

        NotFound is raised by this call, not on the first ``next()``. Exhaust or ``close()``
        the iterator so the underlying file or cursor is released promptly.
        """

    def copy(
        self, source_id: str, model_id: str, *, verified_digest: str | None = None
    ) -> StoredModel:
        """Store the bytes of model ``source_id`` under the new id ``model_id``, durably.

        For a model that already lies in the store (a round's partial becoming the new
        global model). Streams through :meth:`put`; stores that can share the stored bytes do
        so instead. ``verified_digest`` (BLAKE3) as for :meth:`put`.
        """
        return self.put(
            model_id,
            self.get(source_id),
            expected_size=self.size(source_id),
            verified_digest=verified_digest,
        )

    def get_bytes(self, model_id: str) -> bytes:
        """The whole model in memory."""
        return b"".join(self.get(model_id))

    @abstractmethod
    def delete(self, model_id: str) -> bool:
        """Remove the model; False if it did not exist."""

    @abstractmethod
    def exists(self, model_id: str) -> bool:
        """Whether a completed model is stored under ``model_id``."""

    @abstractmethod
    def size(self, model_id: str) -> int:
        """The model's size in bytes; NotFound if absent."""

    @abstractmethod
    def close(self) -> None:
        """Release resources the store owns."""

    def writes_into_statestore(self, size: int) -> bool:
        """Whether a model of ``size`` bytes is written to the statestore's own database, so
        that a put from a thread inside a statestore transaction becomes part of it."""
        return False

    def __enter__(self) -> ModelStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
