"""``fedgrpc controller start|status``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fedgrpc import eventloop
from fedgrpc.cli.connection import controller_options
from fedgrpc.cli.daemon import (
    CONFIG_OPTION,
    announce,
    run_until_signalled,
    server_tls_options,
    setup_logging,
)
from fedgrpc.cli.output import json_option, show_record
from fedgrpc.config import ControllerConfig, load_config

if TYPE_CHECKING:
    from fedgrpc.api import APIClient


@click.group("controller")
def controller_group() -> None:
    """The hub: statestore, model store, sessions and the user API."""


@controller_group.command("start")
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind; 0 picks a free one (default 12080).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Embedded statestore and models.",
)
@click.option("--mongo-uri", help="Put the statestore and models (GridFS) on MongoDB.")
@click.option("--mongo-database", help="MongoDB database name (default fedgrpc).")
@server_tls_options
@CONFIG_OPTION
def controller_start(config_path: Path | None, **options: Any) -> None:
    """Start the controller and serve until SIGINT/SIGTERM."""
    from fedgrpc.controller.app import Controller

    config = load_config(ControllerConfig, path=config_path, overrides=options)
    setup_logging(config.log_level)
    controller = Controller(config)

    def ready() -> None:
        token = controller.admin_token_path
        announce("controller", address=controller.address, admin_token=token and str(token))

    eventloop.run(run_until_signalled(controller.start, controller.stop, ready))


@controller_group.command("status")
@controller_options
@json_option
def controller_status(api: APIClient, as_json: bool) -> None:
    """The controller's state: running session, combiners and clients online, active model."""
    show_record(api.get_controller_status(), as_json=as_json)
