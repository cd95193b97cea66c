"""``fedgrpc combiner start|list|get``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fedgrpc import eventloop
from fedgrpc.cli.connection import controller_options, page_options
from fedgrpc.cli.daemon import (
    CONFIG_OPTION,
    announce,
    run_until_signalled,
    server_tls_options,
    setup_logging,
    token_options,
)
from fedgrpc.cli.output import json_option, show_list, show_record
from fedgrpc.config import CombinerConfig, load_config

if TYPE_CHECKING:
    from fedgrpc.api import APIClient


@click.group("combiner")
def combiner_group() -> None:
    """A scale-out aggregation node between the controller and clients."""


@combiner_group.command("start")
@click.option("--controller", help="Controller HOST:PORT.")
@click.option("--name", help="Unique combiner name (default: host and port).")
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind; 0 (default) picks a free one.")
@click.option("--advertise-address", help="HOST:PORT clients dial (default: the bound address).")
@click.option("--max-clients", type=int, help="Most clients this combiner accepts.")
@token_options("combiner", "FEDGRPC_COMBINER_TOKEN")
@server_tls_options
@CONFIG_OPTION
def combiner_start(config_path: Path | None, **options: Any) -> None:
    """Start a combiner and serve until SIGINT/SIGTERM."""
    from fedgrpc.combiner.app import Combiner

    config = load_config(CombinerConfig, path=config_path, overrides=options)
    setup_logging(config.log_level)
    combiner = Combiner(config)

    def ready() -> None:
        announce("combiner", name=combiner.name, address=combiner.address)

    # The link ends for good only on a TLS failure; the daemon then exits with that error.
    eventloop.run(
        run_until_signalled(combiner.start, combiner.stop, ready, done=combiner.link_ended())
    )


COLUMNS = ("id", "name", "status", "address", "connected_clients", "max_clients", "last_seen")


@combiner_group.command("list")
@controller_options
@page_options
@json_option
def list_combiners(api: APIClient, limit: int | None, as_json: bool) -> None:
    """Combiners known to the network."""
    show_list(api.get_combiners(n_max=limit), COLUMNS, as_json=as_json)


@combiner_group.command("get")
@controller_options
@click.argument("combiner")
@json_option
def get_combiner(api: APIClient, combiner: str, as_json: bool) -> None:
    """One combiner, by id or name."""
    show_record(api.get_combiner(combiner), as_json=as_json)
