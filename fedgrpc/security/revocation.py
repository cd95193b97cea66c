"""Revoked token ids, and the verifier a combiner gets from its controller link.

Both are consulted on the event loop for every call, so they are plain in-memory structures;
the controller persists revocations in its statestore and pushes them to combiners.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from fedgrpc.errors import Unavailable
from fedgrpc.security.tokens import Claims, TokenVerifier, load_public_key_pem


class Verifier(Protocol):
    """What :class:`~fedgrpc.security.interceptor.AuthInterceptor` needs of a verifier."""

    def verify(self, token: str) -> Claims: ...


class RevocationList:
    """The set of revoked token ids (jti); ``revoked(jti)`` is a verifier's ``revoked``."""

    def __init__(self, token_ids: Iterable[str] = ()) -> None:
        self._ids: set[str] = set(token_ids)

    def revoked(self, token_id: str) -> bool:
        return token_id in self._ids

    def add(self, token_id: str) -> None:
        self._ids.add(token_id)

    def replace(self, token_ids: Iterable[str]) -> None:
        self._ids = set(token_ids)

    def ids(self) -> list[str]:
        return sorted(self._ids)


class LinkedVerifier:
    """A combiner's verifier: the controller's public key arrives when the combiner registers.

    Until then every call is refused as UNAVAILABLE (the combiner cannot check tokens yet).
    """

    def __init__(self, revocations: RevocationList) -> None:
        self.revocations = revocations
        self._verifier: TokenVerifier | None = None

    @property
    def ready(self) -> bool:
        return self._verifier is not None

    def set_public_key(self, pem: bytes) -> None:
        self._verifier = TokenVerifier(load_public_key_pem(pem), revoked=self.revocations.revoked)

    def verify(self, token: str) -> Claims:
        if self._verifier is None:
            raise Unavailable(
                "this combiner has not registered with its controller yet; try again shortly"
            )
        return self._verifier.verify(token)
