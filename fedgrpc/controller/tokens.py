"""The controller's token authority: its key pair, token issuing and revocation.

Revoked token ids live in the statestore (so they survive restarts) and in memory (the
interceptor consults them on every call); combiners get the list when they register and each
later revocation over their link.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from fedgrpc.controller.registry import CombinerRegistry
from fedgrpc.errors import InvalidArgument
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.rpc.streams import close_streams_of_token
from fedgrpc.security.keystore import bootstrap_admin_token, load_or_create_keypair
from fedgrpc.security.limits import validate_id
from fedgrpc.security.revocation import RevocationList
from fedgrpc.security.tokens import (
    Claims,
    KeyPair,
    Role,
    TokenIssuer,
    TokenVerifier,
    parse_role,
    public_key_pem,
)
from fedgrpc.statestore import StateStore, now_iso

log = logging.getLogger(__name__)

# The longest lifetime a token created over the API may have (ten years); none means no expiry.
MAX_EXPIRES_IN = 10 * 365 * 86400


class TokenAuthority:
    def __init__(
        self,
        *,
        keys: KeyPair,
        store: StateStore,
        registry: CombinerRegistry,
        revoked: list[str],
        admin_token_path: Path,
    ) -> None:
        self._keys = keys
        self._issuer = TokenIssuer(keys)
        self._store = store
        self._registry = registry
        self.revocations = RevocationList(revoked)
        self.verifier = TokenVerifier(keys.public_key, revoked=self.revocations.revoked)
        self.public_key_pem = public_key_pem(keys.public_key)
        self.admin_token_path = admin_token_path

    @classmethod
    async def open(
        cls, data_dir: Path, store: StateStore, registry: CombinerRegistry
    ) -> TokenAuthority:
        """Load (or make, at first start) the key pair and admin token under ``data_dir``."""

        def load() -> tuple[KeyPair, Path, list[str]]:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = bootstrap_admin_token(data_dir)
            return load_or_create_keypair(data_dir), path, store.revocations.token_ids()

        keys, path, revoked = await asyncio.to_thread(load)
        return cls(
            keys=keys, store=store, registry=registry, revoked=revoked, admin_token_path=path
        )

    def create(
        self,
        *,
        role: str,
        subject: str,
        scope: str | None = None,
        expires_in: float | None = None,
        creator: Claims | None = None,
    ) -> tuple[str, Claims]:
        """A new signed token and its claims. A scoped creator can only hand out its scope."""
        if expires_in is not None and not 0 < expires_in <= MAX_EXPIRES_IN:
            raise InvalidArgument(
                f"expires_in: must be between 1 and {MAX_EXPIRES_IN} seconds, got {expires_in:g}"
            )
        if creator is not None and creator.scope is not None:
            if scope not in (None, creator.scope):
                raise InvalidArgument(
                    f"scope: a token scoped to '{creator.scope}' cannot grant '{scope}'"
                )
            scope = creator.scope
        token = self._issuer.issue(subject, parse_role(role), scope=scope, expires_in=expires_in)
        claims = self.verifier.verify(token)
        log.info("token %s issued to %s (role %s)", claims.token_id, subject, role)
        return token, claims

    async def revoke(self, token_id: str, *, by: str = "") -> dict[str, Any]:
        """Refuse ``token_id`` from now on, here and on every combiner. Idempotent."""
        validate_id(token_id, "token_id")
        record = await asyncio.to_thread(
            self._store.revocations.revoke, token_id, revoked_by=by or None, revoked_at=now_iso()
        )
        self.revocations.add(token_id)
        command = network_pb2.ControllerCommand(revoked=network_pb2.TokenRevoked(token_id=token_id))
        links = self._registry.online()
        for link in links:
            link.send(command)
        # A combiner linked with the revoked token itself loses its link (and cannot relink).
        close_streams_of_token(links, token_id)
        log.warning("token %s revoked by %s", token_id, by or "an admin")
        return record

    def registration_fields(self) -> dict[str, Any]:
        """What a combiner gets in CombinerRegistered to check client tokens itself."""
        return {
            "token_public_key": self.public_key_pem,
            "revoked_token_ids": self.revocations.ids(),
        }


__all__ = ["Role", "TokenAuthority"]
