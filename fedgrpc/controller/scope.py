"""Collaboration/project scope of sessions and models.

A session started, or a seed model uploaded, under a scoped token is tagged with that scope
(committed models inherit their session's). A scoped caller sees only records of its scope:
lists are filtered, and another scope's record reads as NOT_FOUND (not PERMISSION_DENIED), so a
scoped user cannot even learn which ids exist elsewhere. Unscoped tokens (and admins without a
scope) see everything.

Analyses carry their scope as their project: a scoped caller starts analyses only in its own
project (another project is PERMISSION_DENIED: the caller named it, there is nothing to hide)
and sees only that project's analyses, their logs and results.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fedgrpc.errors import NotFound, PermissionDenied
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


def project_in_scope(project_id: str) -> str:
    """The project a new analysis runs under: the caller's scope when it has one."""
    scope = caller_scope()
    if scope is None:
        return project_id
    if project_id and project_id != scope:
        raise PermissionDenied(
            f"this token is limited to project '{scope}' and cannot start analyses in "
            f"'{project_id}'"
        )
    return scope


def analysis_in_scope(record: Record) -> Record:
    scope = caller_scope()
    if scope is not None and record.get("project_id") != scope:
        raise NotFound(f"analysis '{record.get('id', '')}' not found")
    return record
