"""``fedgrpc package create|set-active|list|get|download``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fedgrpc.cli.connection import controller_options, page_options
from fedgrpc.cli.output import json_option, show_list, show_record
from fedgrpc.errors import FailedPrecondition
from fedgrpc.model.chunking import sha256_hex

if TYPE_CHECKING:
    from fedgrpc.api import APIClient


@click.group("package")
def package_group() -> None:
    """Compute packages: the code clients run, shipped by the controller."""


@package_group.command("create")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Tarball to write (default: DIR.tar.gz next to DIR).",
)
def package_create(directory: Path, output: Path | None) -> None:
    """Check DIR (it needs fedgrpc.yaml) and pack it into a reproducible .tar.gz.

    Prints the tarball's path, size and sha256. The same contents always give the same
    bytes, so the sha256 identifies the code a client runs.
    """
    from fedgrpc.packages import build_package

    root = directory.resolve()
    target = (output or root.with_name(f"{root.name}.tar.gz")).resolve()
    data = build_package(root, exclude=[target])
    _write_atomically(target, data)
    click.echo(f"package: {target}")
    click.echo(f"size:    {len(data)} bytes")
    click.echo(f"sha256:  {sha256_hex(data)}")


def _write_atomically(target: Path, data: bytes) -> None:
    """A reader never sees half a tarball: write a temp file beside it, then rename."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as temp_file:
                temp_file.write(data)
            os.chmod(temp_name, 0o644)
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise FailedPrecondition(f"cannot write {target}: {exc.strerror or exc}") from None


PACKAGE_COLUMNS = ("id", "name", "file_name", "size", "sha256", "helper", "active")


@package_group.command("set-active")
@controller_options
@click.argument("tarball", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--helper", default="numpyhelper", show_default=True)
@click.option("--name", help="Package name (default: from fedgrpc.yaml).")
@click.option("--description")
@json_option
def package_set_active(
    api: APIClient,
    tarball: Path,
    helper: str,
    name: str | None,
    description: str | None,
    as_json: bool,
) -> None:
    """Upload a package tarball and make it the one clients run."""
    show_record(
        api.set_active_package(str(tarball), helper, name=name, description=description),
        as_json=as_json,
    )


@package_group.command("list")
@controller_options
@page_options
@json_option
def package_list(api: APIClient, limit: int | None, as_json: bool) -> None:
    """Uploaded packages, newest first."""
    show_list(api.get_packages(n_max=limit), PACKAGE_COLUMNS, as_json=as_json)


@package_group.command("get")
@controller_options
@click.argument("package_id", required=False)
@json_option
def package_get(api: APIClient, package_id: str | None, as_json: bool) -> None:
    """One package (default: the active one)."""
    record = api.get_package(package_id) if package_id else api.get_active_package()
    show_record(record, as_json=as_json)


@package_group.command("download")
@controller_options
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def package_download(api: APIClient, path: Path) -> None:
    """Download the active package to PATH (its sha256 is verified)."""
    api.download_package(str(path))
    click.echo(f"wrote {path}")
