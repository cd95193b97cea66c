"""``fedgrpc session start|list|get|watch|stop``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from fedgrpc.cli.connection import controller_options, page_options
from fedgrpc.cli.output import json_option, show_list, show_record

if TYPE_CHECKING:
    from fedgrpc.api import APIClient

COLUMNS = ("id", "name", "status", "rounds_completed", "rounds_planned", "model_id", "created_at")


def _json_object(option: str, text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc.msg}", param_hint=option) from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=option)
    return value


@click.group("session")
def session_group() -> None:
    """Training sessions: start, follow and stop them."""


@session_group.command("start")
@controller_options
@click.option("--id", "session_id", help="Session id (default: generated).")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--aggregator", default="fedavg", show_default=True)
@click.option("--aggregator-kwargs", help="JSON object, e.g. '{\"learning_rate\": 0.01}'.")
@click.option("--model-id", help="Start from this model (default: the active model).")
@click.option("--round-timeout", type=float, default=180.0, show_default=True)
@click.option("--round-buffer-size", type=int, default=-1, show_default=True)
@click.option("--min-clients", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--requested-clients", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--validate/--no-validate", default=True, show_default=True)
@click.option("--client-settings", help="JSON object passed to train() as settings.")
@click.option("--wait", is_flag=True, help="Follow the session until it ends.")
@json_option
def start(
    api: APIClient,
    aggregator_kwargs: str | None,
    client_settings: str | None,
    wait: bool,
    as_json: bool,
    session_id: str | None,
    **settings: Any,
) -> None:
    """Start a session from the active (or given) model."""
    result = api.start_session(
        id=session_id,
        aggregator_kwargs=_json_object("--aggregator-kwargs", aggregator_kwargs),
        client_settings=_json_object("--client-settings", client_settings),
        **settings,
    )
    if wait:
        show_record(
            api.wait_for_session(result["session_id"], progress=not as_json), as_json=as_json
        )
    elif as_json:
        show_record(result, as_json=True)
    else:
        click.echo(f"session {result['session_id']} started")


@session_group.command("list")
@controller_options
@page_options
@json_option
def list_sessions(api: APIClient, limit: int | None, as_json: bool) -> None:
    """List sessions, newest first."""
    show_list(api.get_sessions(n_max=limit), COLUMNS, as_json=as_json)


@session_group.command("get")
@controller_options
@click.argument("session_id")
@json_option
def get(api: APIClient, session_id: str, as_json: bool) -> None:
    """Show one session."""
    show_record(api.get_session(session_id), as_json=as_json)


@session_group.command("watch")
@controller_options
@click.argument("session_id")
@click.option("--timeout", type=float, help="Give up after this many seconds.")
@json_option
def watch(api: APIClient, session_id: str, timeout: float | None, as_json: bool) -> None:
    """Follow a session until it ends (a progress bar on a terminal)."""
    session = api.wait_for_session(session_id, timeout=timeout, progress=not as_json)
    show_record(session, as_json=as_json)
    if session.get("status") != "finished":
        raise click.ClickException(
            f"session {session_id} ended as {session.get('status')}: {session.get('reason', '')}"
        )


@session_group.command("stop")
@controller_options
@click.argument("session_id")
@json_option
def stop(api: APIClient, session_id: str, as_json: bool) -> None:
    """Stop a running session after cancelling its current round."""
    show_record(api.stop_session(session_id), as_json=as_json)
