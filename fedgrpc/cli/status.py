"""``fedgrpc status list``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from fedgrpc.cli.connection import controller_options, page_options
from fedgrpc.cli.output import json_option, show_list

if TYPE_CHECKING:
    from fedgrpc.api import APIClient

COLUMNS = ("created_at", "log_level", "event_type", "sender_name", "message")


@click.group("status")
def status_group() -> None:
    """Status events (FEDn's statuses)."""


@status_group.command("list")
@controller_options
@click.option("--session-id")
@click.option("--event-type")
@click.option("--sender-name")
@click.option("--sender-role")
@page_options
@json_option
def list_statuses(api: APIClient, limit: int | None, as_json: bool, **filters: Any) -> None:
    """List status events, newest first."""
    show_list(api.get_statuses(n_max=limit, **filters), COLUMNS, as_json=as_json)
