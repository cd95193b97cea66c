"""``fedgrpc health ADDRESS``: ask a daemon's grpc.health.v1 service (container probes)."""

from __future__ import annotations

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@click.command("health")
@click.argument("address", default="127.0.0.1:12080")
@click.option("--service", default="", help="A service name; empty asks about the server.")
@click.option("--timeout", type=float, default=3.0, show_default=True)
@click.option(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False),
    envvar="FEDGRPC_HEALTH_TLS_CA",
    help="The server serves TLS: trust this CA.",
)
def health_command(address: str, service: str, timeout: float, tls_ca: str | None) -> None:
    """Exit 0 when the server at ADDRESS reports SERVING, 1 otherwise."""
    if tls_ca is None:
        channel = grpc.insecure_channel(address)
    else:
        with open(tls_ca, "rb") as ca:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
        channel = grpc.secure_channel(address, credentials)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            reason = f"{error.code().name}: {error.details()}"
            raise click.ClickException(f"{address}: {reason}") from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    click.echo(f"{address}: {status}")
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise SystemExit(1)
