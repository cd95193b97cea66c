"""``fedgrpc certs``: a development CA and the certificates for TLS and mutual TLS."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from fedgrpc.security.certs import CA_DAYS, DEFAULT_HOSTS, LEAF_DAYS, CertFiles

_dir_option = click.Path(file_okay=False, path_type=Path)


@click.group("certs")
def certs_group() -> None:
    """Development certificates: a CA, server and client certificates (EC P-256)."""


@certs_group.command("init")
@click.option("--out", required=True, type=_dir_option, help="Directory to write into.")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="Name or IP the server certificate is valid for (repeatable; "
    "default: localhost and 127.0.0.1).",
)
@click.option("--days", default=CA_DAYS, show_default=True, help="CA validity in days.")
@click.option("--force", is_flag=True, help="Replace existing files.")
def certs_init(out: Path, hosts: tuple[str, ...], days: int, force: bool) -> None:
    """Create a CA (ca.pem, ca.key) and a server certificate (server.pem, server.key) in OUT."""
    from fedgrpc.security.certs import init_ca

    chosen = hosts or DEFAULT_HOSTS
    ca, server = init_ca(out, hosts=chosen, days=days, force=force)
    _summary("CA", ca)
    _summary("server", server, hosts=chosen)
    click.echo("keep the .key files private; give ca.pem to every node that must trust servers")


@certs_group.command("issue")
@click.option("--ca-dir", required=True, type=_dir_option, help="Directory holding ca.pem/.key.")
@click.option("--name", required=True, help="Certificate name: the CN and the file name.")
@click.option("--server", is_flag=True, help="A server certificate (serverAuth, SANs).")
@click.option("--client", is_flag=True, help="A client certificate for mTLS (clientAuth).")
@click.option("--host", "hosts", multiple=True, help="SAN for a server certificate (repeatable).")
@click.option("--days", default=LEAF_DAYS, show_default=True, help="Validity in days.")
@click.option("--out", type=_dir_option, help="Directory to write into (default: --ca-dir).")
@click.option("--force", is_flag=True, help="Replace existing files.")
def certs_issue(
    ca_dir: Path,
    name: str,
    server: bool,
    client: bool,
    hosts: tuple[str, ...],
    days: int,
    out: Path | None,
    force: bool,
) -> None:
    """Sign a server and/or client certificate NAME.pem + NAME.key with the CA in --ca-dir.

    Without --server or --client a client certificate is made. Both flags together make one
    certificate good for both ends (a combiner serves clients and dials the controller).
    """
    from fedgrpc.security.certs import issue_certificate

    if hosts and not server:
        raise click.UsageError("--host only applies to --server certificates")
    client = client or not server
    chosen = (hosts or DEFAULT_HOSTS) if server else ()
    files = issue_certificate(
        ca_dir, name, server=server, client=client, hosts=chosen, days=days, out=out, force=force
    )
    kind = "/".join(k for k, on in (("server", server), ("client", client)) if on)
    _summary(f"{kind} '{name}'", files, hosts=chosen)


def _summary(label: str, files: CertFiles, hosts: Sequence[str] = ()) -> None:
    suffix = f"  (hosts: {', '.join(hosts)})" if hosts else ""
    click.echo(f"{label} certificate: {files.cert}{suffix}")
    click.echo(f"{label} key:         {files.key}  (mode 0600)")
