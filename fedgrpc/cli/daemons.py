"""``fedgrpc controller|combiner|client start``: the three daemons."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from fedgrpc.cli.daemon import announce, run_until_signalled, setup_logging
from fedgrpc.config import ClientConfig, CombinerConfig, ControllerConfig, load_config

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML or TOML file.",
)


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
@CONFIG_OPTION
def controller_start(config_path: Path | None, **options: Any) -> None:
    """Start the controller and serve until SIGINT/SIGTERM."""
    from fedgrpc.controller.app import Controller

    config = load_config(ControllerConfig, path=config_path, overrides=options)
    setup_logging(config.log_level)
    controller = Controller(config)

    def ready() -> None:
        announce("controller", address=controller.address)

    asyncio.run(run_until_signalled(controller.start, controller.stop, ready))


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
@CONFIG_OPTION
def combiner_start(config_path: Path | None, **options: Any) -> None:
    """Start a combiner and serve until SIGINT/SIGTERM."""
    from fedgrpc.combiner.app import Combiner

    config = load_config(CombinerConfig, path=config_path, overrides=options)
    setup_logging(config.log_level)
    combiner = Combiner(config)

    def ready() -> None:
        announce("combiner", name=combiner.name, address=combiner.address)

    asyncio.run(run_until_signalled(combiner.start, combiner.stop, ready))


@click.group("client")
def client_group() -> None:
    """A node at a data site that runs your train/validate code."""


@client_group.command("start")
@click.option("--controller", help="Controller HOST:PORT.")
@click.option("--entry", help="module or module:object holding train and validate.")
@click.option(
    "--package",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Package directory with fedgrpc.yaml.",
)
@click.option("--name", help="Unique client name (default: host plus a random suffix).")
@click.option("--preferred-combiner", help="Combiner to prefer when it is online.")
@CONFIG_OPTION
def client_start(
    config_path: Path | None, entry: str | None, package: Path | None, **options: Any
) -> None:
    """Connect to the network and run tasks until SIGINT/SIGTERM."""
    from fedgrpc.client.entry import load_entry, load_package
    from fedgrpc.client.node import Client

    if (entry is None) == (package is None):
        raise click.UsageError("give exactly one of --entry and --package")
    config = load_config(ClientConfig, path=config_path, overrides=options)
    setup_logging(config.log_level)
    functions = load_entry(entry) if entry is not None else load_package(package)  # type: ignore[arg-type]
    client = Client(config=config, train=functions.train, validate=functions.validate)

    async def nothing_to_start() -> None:
        pass

    async def stop() -> None:
        client.stop()

    asyncio.run(
        run_until_signalled(
            nothing_to_start,
            stop,
            lambda: announce("client", name=client.name),
            done=client.run_async(),
        )
    )
