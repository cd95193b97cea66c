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
    @click.option(
        "--tls-ca", type=_FILE, envvar="FEDGRPC_TLS_CA", help="Dial over TLS, trusting this CA."
    )
    @click.option("--tls-cert", type=_FILE, help="Client certificate for mutual TLS.")
    @click.option("--tls-key", type=_FILE, help="The client certificate's private key.")
    @functools.wraps(command)
    def wrapper(
        controller: str,
        token: str | None,
        tls_ca: Path | None,
        tls_cert: Path | None,
        tls_key: Path | None,
        **kwargs: Any,
    ) -> Any:
        from fedgrpc.api import APIClient

        if (tls_cert is None) != (tls_key is None):
            raise click.UsageError("--tls-cert and --tls-key go together")
        with APIClient(
            controller,
            secure=tls_ca is not None,
            token=token,
            root_certificates=_read(tls_ca),
            certificate_chain=_read(tls_cert),
            private_key=_read(tls_key),
        ) as api:
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
