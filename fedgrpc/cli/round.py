"""``fedgrpc round list|get``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from fedgrpc.cli.connection import controller_options, page_options
from fedgrpc.cli.output import json_option, show_list, show_record

if TYPE_CHECKING:
    from fedgrpc.api import APIClient

COLUMNS = (
    "id",
    "session_id",
    "round_number",
    "status",
    "num_updates",
    "duration_seconds",
    "reason",
)


@click.group("round")
def round_group() -> None:
    """Training rounds."""


@round_group.command("list")
@controller_options
@click.option("--session-id", help="Only this session's rounds.")
@page_options
@json_option
def list_rounds(api: APIClient, session_id: str | None, limit: int | None, as_json: bool) -> None:
    """List rounds, newest first."""
    show_list(api.get_rounds(n_max=limit, session_id=session_id), COLUMNS, as_json=as_json)


@round_group.command("get")
@controller_options
@click.argument("round_id")
@json_option
def get_round(api: APIClient, round_id: str, as_json: bool) -> None:
    """Show one round with its per-combiner and per-client details."""
    show_record(api.get_round(round_id), as_json=as_json)
