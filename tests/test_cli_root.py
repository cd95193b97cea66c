"""The root command: --version, --help, and one readable line for domain errors."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from fedgrpc import __version__
from fedgrpc.cli import main
from fedgrpc.errors import NotFound


def test_version_and_help() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output
    assert runner.invoke(main, ["--help"]).exit_code == 0


def test_domain_error_is_one_line_without_traceback() -> None:
    @main.command("raise-not-found", hidden=True)
    def raise_not_found() -> None:
        raise NotFound("session 'abc' not found")

    try:
        result = CliRunner().invoke(main, ["raise-not-found"])
    finally:
        main.commands.pop("raise-not-found")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: session 'abc' not found [NOT_FOUND]"
    assert not isinstance(result.exception, NotFound)  # handled, not propagated


def test_console_script_runs_as_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedgrpc", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fedgrpc, version {__version__}"
    assert isinstance(main, click.Group)
