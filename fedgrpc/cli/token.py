"""``fedgrpc token``: tokens signed with the controller's key."""

from __future__ import annotations

import re
from pathlib import Path

import click

from fedgrpc.security.tokens import Role

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
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The controller's data directory (its key pair is in DIR/keys; made if absent).",
)
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--subject", required=True, help="Who the token is for, e.g. site-1.")
@click.option(
    "--expires", callback=_duration_option, help="Lifetime: seconds or 90m, 1h, 7d (default: none)."
)
@click.option("--scope", help="Collaboration/project id the token is limited to.")
def token_create(
    data_dir: Path, role: str, subject: str, expires: int | None, scope: str | None
) -> None:
    """Print a token signed with the controller's key (the token alone on stdout)."""
    from fedgrpc.security.keystore import load_or_create_keypair
    from fedgrpc.security.tokens import TokenIssuer

    issuer = TokenIssuer(load_or_create_keypair(data_dir))
    token = issuer.issue(subject, role, scope=scope, expires_in=expires)
    lifetime = f"expires in {expires} s" if expires else "does not expire"
    click.echo(f"token for '{subject}' (role {role}) {lifetime}", err=True)
    click.echo(token)
