"""``fedgrpc client start|list|get``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fedgrpc import eventloop
from fedgrpc.cli.connection import controller_options, page_options
from fedgrpc.cli.daemon import (
    CONFIG_OPTION,
    announce,
    client_tls_options,
    run_until_signalled,
    setup_logging,
    token_options,
)
from fedgrpc.cli.output import json_option, show_list, show_record
from fedgrpc.config import ClientConfig, load_config

if TYPE_CHECKING:
    from fedgrpc.api import APIClient


@click.group("client")
def client_group() -> None:
    """A node at a data site that runs your train/validate code and analyses."""


@client_group.command("start")
@click.option("--controller", help="Controller HOST:PORT.")
@click.option("--entry", help="module or module:object holding train and validate.")
@click.option(
    "--package",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Package directory with fedgrpc.yaml.",
)
@click.option(
    "--package-from-controller",
    is_flag=True,
    help="Download, verify and run the controller's active package.",
)
@click.option(
    "--package-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Package cache for --package-from-controller "
    "(default: $FEDGRPC_PACKAGE_CACHE or ~/.cache/fedgrpc/packages).",
)
@click.option("--name", help="Unique client name (default: host plus a random suffix).")
@click.option("--preferred-combiner", help="Combiner to prefer when it is online.")
@token_options("client", "FEDGRPC_CLIENT_TOKEN")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The node's key pair and local analysis data "
    "(default: $XDG_DATA_HOME/fedgrpc/nodes/NAME, ~/.local/share without XDG_DATA_HOME).",
)
@client_tls_options
@CONFIG_OPTION
def client_start(
    config_path: Path | None,
    entry: str | None,
    package: Path | None,
    package_from_controller: bool,
    package_dir: Path | None,
    **options: Any,
) -> None:
    """Connect to the network and run tasks until SIGINT/SIGTERM.

    Without --entry, --package or --package-from-controller the node runs analyses only.
    """
    from fedgrpc.client.entry import EntryPoints, load_client_code
    from fedgrpc.client.node import Client

    code_sources = [entry is not None, package is not None, package_from_controller].count(True)
    if code_sources > 1:
        raise click.UsageError(
            "give at most one of --entry, --package and --package-from-controller"
        )
    if package_dir is not None and not package_from_controller:
        raise click.UsageError("--package-dir goes with --package-from-controller")
    config = load_config(ClientConfig, path=config_path, overrides=options)
    setup_logging(config.log_level)
    if code_sources == 0:
        # An analysis-only node (FLAME): it runs the analyses it is sent; training and
        # validation tasks are answered as failed ("no train function").
        functions = EntryPoints(train=None, validate=None)
        logging.getLogger(__name__).info("no training code given: this node runs analyses only")
    else:
        functions = load_client_code(
            config,
            entry=entry,
            package=package,
            from_controller=package_from_controller,
            package_dir=package_dir,
        )
    client = Client(config=config, train=functions.train, validate=functions.validate)

    async def nothing_to_start() -> None:
        pass

    async def stop() -> None:
        client.stop()

    eventloop.run(
        run_until_signalled(
            nothing_to_start,
            stop,
            lambda: announce("client", name=client.name),
            done=client.run_async(),
        )
    )


COLUMNS = ("id", "name", "status", "combiner_name", "ip", "last_seen")


@client_group.command("list")
@controller_options
@click.option("--online", is_flag=True, help="Only clients connected now.")
@page_options
@json_option
def list_clients(api: APIClient, online: bool, limit: int | None, as_json: bool) -> None:
    """Clients known to the network."""
    found = api.get_active_clients(n_max=limit) if online else api.get_clients(n_max=limit)
    show_list(found, COLUMNS, as_json=as_json)


@client_group.command("get")
@controller_options
@click.argument("client")
@json_option
def get_client(api: APIClient, client: str, as_json: bool) -> None:
    """One client, by id or name."""
    show_record(api.get_client(client), as_json=as_json)
