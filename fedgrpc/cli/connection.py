"""How CLI commands reach the controller: ``--controller`` / ``FEDGRPC_CONTROLLER``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fedgrpc.errors import Unavailable

F = TypeVar("F", bound=Callable[..., Any])
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)

DEFAULT_CONTROLLER = "127.0.0.1:12080"


def controller_options(command: F) -> F:
    """Add --controller and --token; pass an APIClient to the command as ``api``."""

    @click.option(
        "--controller",
        envvar="FEDGRPC_CONTROLLER",
        default=DEFAULT_CONTROLLER,
        show_default=True,
        help="Controller HOST:PORT (env FEDGRPC_CONTROLLER).",
    )
    @click.option(
        "--token", envvar="FEDGRPC_AUTH_TOKEN", help="Bearer token (env FEDGRPC_AUTH_TOKEN)."
    )
    @functools.wraps(command)
    def wrapper(controller: str, token: str | None, **kwargs: Any) -> Any:
        from fedgrpc.api import APIClient

        with APIClient(controller, token=token) as api:
            try:
                return command(api=api, **kwargs)
            except Unavailable as exc:
                raise Unavailable(f"cannot reach the controller at {controller}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def page_options(command: F) -> F:
    command = click.option("--limit", type=click.IntRange(min=1), help="Show at most this many.")(
        command
    )
    return command
