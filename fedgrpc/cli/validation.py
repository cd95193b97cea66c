"""``fedgrpc validation list``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from fedgrpc.cli.connection import controller_options, page_options
from fedgrpc.cli.output import json_option, show_list

if TYPE_CHECKING:
    from fedgrpc.api import APIClient

COLUMNS = ("created_at", "model_id", "sender_name", "metrics")


@click.group("validation")
def validation_group() -> None:
    """Clients' validation metrics."""


@validation_group.command("list")
@controller_options
@click.option("--session-id")
@click.option("--model-id")
@click.option("--sender-name")
@page_options
@json_option
def list_validations(api: APIClient, limit: int | None, as_json: bool, **filters: Any) -> None:
    """List validations, newest first."""
    show_list(api.get_validations(n_max=limit, **filters), COLUMNS, as_json=as_json)
