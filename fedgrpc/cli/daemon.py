"""Running a daemon from the command line: logging, signals, and the ready line.

Each daemon prints exactly one JSON line to stdout once it serves, e.g.
``{"event": "ready", "role": "combiner", "name": "c1", "address": "127.0.0.1:40411"}``,
so scripts and tests started with ``--port 0`` can read the bound address.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fedgrpc.allocator import tune_allocator

F = TypeVar("F", bound=Callable[..., Any])
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML or TOML file.",
)


def server_tls_options(command: F) -> F:
    """--tls-cert/--tls-key/--tls-ca/--require-client-cert/--insecure for a daemon's server."""
    for option in reversed(
        [
            click.option("--tls-cert", type=_FILE, help="Serve TLS with this certificate (PEM)."),
            click.option("--tls-key", type=_FILE, help="The certificate's private key (PEM)."),
            click.option("--tls-ca", type=_FILE, help="CA that peers' certificates chain to."),
            click.option(
                "--require-client-cert",
                is_flag=True,
                default=None,
                help="Mutual TLS: refuse clients without a certificate from --tls-ca.",
            ),
            click.option(
                "--insecure",
                is_flag=True,
                default=None,
                help="Allow plaintext on a non-loopback address (a warning is logged).",
            ),
        ]
    ):
        command = option(command)
    return command


def client_tls_options(command: F) -> F:
    """--tls-ca (TLS to the servers this daemon dials) and --tls-cert/--tls-key (mTLS)."""
    for option in reversed(
        [
            click.option("--tls-ca", type=_FILE, help="Dial servers over TLS, trusting this CA."),
            click.option("--tls-cert", type=_FILE, help="Client certificate for mutual TLS."),
            click.option("--tls-key", type=_FILE, help="The client certificate's private key."),
        ]
    ):
        command = option(command)
    return command


def token_options(role: str, env: str) -> Callable[[F], F]:
    """--token / --token-file for a daemon that dials the network with a bearer token.

    A file keeps the token out of the process list and out of compose files (the compose
    stack mints tokens into a volume before the daemons start).
    """

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def with_token(*args: Any, token_file: Path | None, **options: Any) -> Any:
            if token_file is not None:
                if options.get("token"):
                    raise click.UsageError("give --token or --token-file, not both")
                options["token"] = _read_token(token_file)
            return command(*args, **options)

        decorated = click.option(
            "--token-file",
            type=_FILE,
            help="Read the bearer token from this file.",
        )(with_token)
        return click.option(
            "--token",
            help=f"Bearer token (role {role}, subject = --name) from `fedgrpc token create` "
            f"(env {env}).",
        )(decorated)  # type: ignore[return-value]

    return decorate


def _read_token(path: Path) -> str:
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise click.UsageError(f"token file {str(path)!r} is empty")
    return token


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def announce(role: str, **fields: Any) -> None:
    print(json.dumps({"event": "ready", "role": role, **fields}), flush=True)


async def run_until_signalled(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    on_ready: Callable[[], None],
    *,
    done: Awaitable[Any] | None = None,
) -> None:
    """Start, announce, then wait for SIGINT/SIGTERM (or ``done``) and stop gracefully.

    ``done`` is the daemon's own body when it has one (a client's run loop): its failure ends
    the daemon with that error; on a signal, ``stop`` asks it to finish and it gets a few
    seconds to do so.
    """
    tune_allocator()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await start()
    on_ready()
    signalled = asyncio.ensure_future(stopping.wait())
    body = asyncio.ensure_future(done) if done is not None else None
    try:
        waiters = {signalled} | ({body} if body is not None else set())
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
        await stop()
        if body is not None:
            finished, _ = await asyncio.wait({body}, timeout=STOP_GRACE_SECONDS)
            if not finished:
                body.cancel()
            elif not body.cancelled():
                body.result()  # a failed daemon body surfaces here, after a clean stop


STOP_GRACE_SECONDS = 10.0
