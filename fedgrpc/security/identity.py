"""A client or combiner acts only as itself: the names it gives must be its token's subject.

Servicers call these with the name a request carries (a hello, a registration, an assignment
request, the owner of an upload's task). Admin tokens may act for anyone (operators and the
fuzz tests); without auth (``current_claims`` unset) there is nothing to compare.
"""

from __future__ import annotations

from fedgrpc.errors import PermissionDenied
from fedgrpc.security.interceptor import current_claims
from fedgrpc.security.tokens import Claims, Role


def acting_subject() -> str | None:
    """The subject names must match, or None when anything goes (admin, or no auth)."""
    claims = current_claims.get()
    if claims is None or claims.role is Role.ADMIN:
        return None
    return claims.subject


def check_acting_as(name: str, what: str) -> None:
    """PermissionDenied unless the caller's token subject is ``name``."""
    subject = acting_subject()
    if subject is not None and name != subject:
        raise PermissionDenied(
            f"{what} '{name}' is not this token's subject '{subject}'; "
            "a token only lets its holder act as itself"
        )


def caller_claims() -> Claims | None:
    return current_claims.get()


def caller_token_id() -> str:
    """The id (jti) of the call's token; empty without auth."""
    claims = current_claims.get()
    return claims.token_id if claims is not None else ""
