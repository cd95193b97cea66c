"""``fedgrpc model list|get|download|set-active|trail``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from fedgrpc.cli.connection import controller_options, page_options
from fedgrpc.cli.output import json_option, show_list, show_record

if TYPE_CHECKING:
    from fedgrpc.api import APIClient

COLUMNS = ("id", "name", "session_id", "round_number", "parent_model", "size", "active")


@click.group("model")
def model_group() -> None:
    """Models in the trail: list, inspect, download, seed."""


@model_group.command("list")
@controller_options
@click.option("--session-id", help="Only this session's models.")
@page_options
@json_option
def list_models(api: APIClient, session_id: str | None, limit: int | None, as_json: bool) -> None:
    """List models, newest first."""
    show_list(api.get_models(session_id=session_id, n_max=limit), COLUMNS, as_json=as_json)


@model_group.command("get")
@controller_options
@click.argument("model_id")
@json_option
def get(api: APIClient, model_id: str, as_json: bool) -> None:
    """Show one model's record."""
    show_record(api.get_model(model_id), as_json=as_json)


@model_group.command("download")
@controller_options
@click.argument("model_id")
@click.argument("path", type=click.Path(dir_okay=False, writable=True, path_type=Path))
def download(api: APIClient, model_id: str, path: Path) -> None:
    """Download a model (safetensors) to PATH; its BLAKE3 digest is verified."""
    api.download_model(model_id, str(path))
    click.echo(f"wrote {path}")


@model_group.command("set-active")
@controller_options
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def set_active(api: APIClient, path: Path, as_json: bool) -> None:
    """Upload a seed model (.safetensors or .npz) and make it the active model."""
    show_record(api.set_active_model(str(path)), as_json=as_json)


@model_group.command("trail")
@controller_options
@click.argument("model_id", required=False)
@page_options
@json_option
def trail(api: APIClient, model_id: str | None, limit: int | None, as_json: bool) -> None:
    """The model's ancestors, newest first (default: from the active model)."""
    show_list(api.get_model_trail(id=model_id, n_max=limit), COLUMNS, as_json=as_json)
