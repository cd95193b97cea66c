"""Collaboration/project scope of sessions and models.

A session started, or a seed model uploaded, under a scoped token is tagged with that scope
(committed models inherit their session's). A scoped caller sees only records of its scope:
lists are filtered, and another scope's record reads as NOT_FOUND (not PERMISSION_DENIED), so a
scoped user cannot even learn which ids exist elsewhere. Unscoped tokens (and admins without a
scope) see everything.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fedgrpc.errors import NotFound
from fedgrpc.security.interceptor import current_claims
from fedgrpc.statestore import Record


def caller_scope() -> str | None:
    """The scope of the call's token, or None for an unscoped (or unauthenticated) call."""
    claims = current_claims.get()
    return claims.scope if claims is not None else None


def visible(record: Record, scope: str | None) -> bool:
    return scope is None or record.get("scope") == scope


def in_scope(record: Record, noun: str) -> Record:
    """``record`` if the caller may see it; NotFound (as for an unknown id) otherwise."""
    if not visible(record, caller_scope()):
        raise NotFound(f"{noun} '{record.get('id', '')}' not found")
    return record


def scoped(filters: dict[str, Any]) -> dict[str, Any]:
    """List filters narrowed to the caller's scope."""
    scope = caller_scope()
    return filters if scope is None else {**filters, "scope": scope}


def only_visible(records: Iterable[Record]) -> list[Record]:
    scope = caller_scope()
    return [record for record in records if visible(record, scope)]
