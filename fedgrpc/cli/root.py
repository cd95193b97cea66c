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
    from fedgrpc.cli.analysis import analysis_group
    from fedgrpc.cli.certs import certs_group
    from fedgrpc.cli.client import client_group
    from fedgrpc.cli.combiner import combiner_group
    from fedgrpc.cli.controller import controller_group
    from fedgrpc.cli.health import health_command
    from fedgrpc.cli.model import model_group
    from fedgrpc.cli.package import package_group
    from fedgrpc.cli.round import round_group
    from fedgrpc.cli.run import run_command
    from fedgrpc.cli.session import session_group
    from fedgrpc.cli.status import status_group
    from fedgrpc.cli.token import token_group
    from fedgrpc.cli.validation import validation_group

    commands = (
        run_command,
        controller_group,
        combiner_group,
        client_group,
        session_group,
        analysis_group,
        model_group,
        package_group,
        round_group,
        status_group,
        validation_group,
        health_command,
        certs_group,
        token_group,
    )
    for command in commands:
        main.add_command(command)


_register_commands()
