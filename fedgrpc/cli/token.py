"""``fedgrpc token``: tokens signed with the controller's key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import click
import jwt

from fedgrpc.cli.connection import controller_options
from fedgrpc.security.tokens import Role

if TYPE_CHECKING:
    from fedgrpc.api import APIClient

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+)([smhdw]?)")


def parse_duration(value: str) -> int:
    """Seconds from ``3600``, ``90s``, ``30m``, ``1h``, ``7d`` or ``2w``; ValueError otherwise."""
    match = _DURATION.fullmatch(value.strip().lower())
    seconds = int(match[1]) * _UNITS[match[2] or "s"] if match else 0
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration like 3600, 90m, 1h or 7d")
    return seconds


def _duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    try:
        return None if value is None else parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group("token")
def token_group() -> None:
    """Signed access tokens (Ed25519 JWTs) with a role and an optional scope."""


@token_group.command("create")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Sign with the key in the controller's data directory (DIR/keys; made if absent) "
    "instead of asking the controller (which needs an admin --token).",
)
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--subject", required=True, help="Who the token is for, e.g. site-1.")
@click.option(
    "--expires", callback=_duration_option, help="Lifetime: seconds or 90m, 1h, 7d (default: none)."
)
@click.option("--scope", help="Collaboration/project id the token is limited to.")
@controller_options
def token_create(
    api: APIClient,
    data_dir: Path | None,
    role: str,
    subject: str,
    expires: int | None,
    scope: str | None,
) -> None:
    """Print a token signed with the controller's key (the token alone on stdout)."""
    if data_dir is not None:
        from fedgrpc.security.keystore import mint_token

        token = mint_token(data_dir, subject, role, scope=scope, expires_in=expires)
        token_id = jwt.decode(token, options={"verify_signature": False})["jti"]
    else:
        created = api.create_token(role, subject, expires_in=expires, scope=scope)
        token, token_id = created["token"], created["token_id"]
    lifetime = f"expires in {expires} s" if expires else "does not expire"
    click.echo(f"token {token_id} for '{subject}' (role {role}) {lifetime}", err=True)
    click.echo(token)


@token_group.command("revoke")
@click.argument("token_id")
@controller_options
def token_revoke(api: APIClient, token_id: str) -> None:
    """Refuse a token (by its id) from now on, on the controller and every combiner."""
    revoked = api.revoke_token(token_id)
    click.echo(f"revoked {revoked['token_id']} at {revoked['revoked_at']}")
