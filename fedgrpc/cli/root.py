"""The root ``fedgrpc`` group and the error handling every subcommand shares."""

from __future__ import annotations

from typing import Any

import click

from fedgrpc._version import __version__
from fedgrpc.errors import FedgrpcError


class FedgrpcGroup(click.Group):
    """A group that turns domain errors into one readable line and a non-zero exit.

    A user mistake (unknown id, unreachable controller, bad file) must never end in a
    traceback; only a bug should.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FedgrpcError as exc:
            raise click.ClickException(f"{exc} [{exc.code.name}]") from exc


@click.group(cls=FedgrpcGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="fedgrpc")
def main() -> None:
    """fedgrpc: federated learning and federated analysis over gRPC.

    Start a controller, one or more combiners and clients, then drive sessions from the
    command line or the Python API client.
    """


def _register_commands() -> None:
    from fedgrpc.cli.daemons import client_group, combiner_group, controller_group
    from fedgrpc.cli.health import health_command
    from fedgrpc.cli.run import run_command

    commands = (controller_group, combiner_group, client_group, run_command, health_command)
    for command in commands:
        main.add_command(command)


_register_commands()
