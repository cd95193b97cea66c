"""Tokens: create and revoke (admin only)."""

from __future__ import annotations

from fedgrpc.api._base import APIBase
from fedgrpc.api._records import Record, to_dict


class TokenMethods(APIBase):
    def create_token(
        self,
        role: str,
        subject: str,
        expires_in: float | None = None,
        scope: str | None = None,
    ) -> Record:
        """A new token signed by the controller: ``{"token", "token_id", "subject", "role",
        "scope", "expires_at"}``. ``role`` is admin, user, combiner or client; a combiner's or
        client's ``subject`` must be its name. Without ``expires_in`` (seconds) it lasts until
        revoked. Admin only."""
        created = self.control.create_token(
            role=role, subject=subject, expires_in=expires_in, scope=scope or ""
        )
        return to_dict(created)

    def revoke_token(self, token_id: str) -> Record:
        """Refuse the token with this id (its ``token_id``/jti) from now on, on the controller
        and every combiner: ``{"token_id", "revoked_at"}``. Admin only."""
        return to_dict(self.control.revoke_token(token_id=token_id))
