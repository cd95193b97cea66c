"""Running a daemon from the command line: logging, signals, and the ready line.

Each daemon prints exactly one JSON line to stdout once it serves, e.g.
``{"event": "ready", "role": "combiner", "name": "c1", "address": "127.0.0.1:40411"}``,
so scripts and tests started with ``--port 0`` can read the bound address.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

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
