"""``fedgrpc certs`` and ``fedgrpc token`` through click, under a root like the real one."""

from __future__ import annotations

import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from cryptography import x509

from fedgrpc.cli.certs import certs_group
from fedgrpc.cli.root import FedgrpcGroup
from fedgrpc.cli.token import parse_duration, token_group
from fedgrpc.security import Role, controller_verifier


@click.group(cls=FedgrpcGroup)
def root() -> None:
    """Stands in for ``fedgrpc`` (the lead registers the groups on the real root)."""


root.add_command(certs_group)
root.add_command(token_group)


def _run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(root, list(args))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certs_init_and_issue(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    result = _run(
        "certs", "init", "--out", str(out), "--host", "ctrl.example", "--host", "10.0.0.5"
    )
    assert result.exit_code == 0, result.output
    assert str(out / "ca.pem") in result.output
    assert "hosts: ctrl.example, 10.0.0.5" in result.output
    for name in ("ca", "server"):
        assert _mode(out / f"{name}.key") == 0o600
        assert (out / f"{name}.pem").is_file()
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["ctrl.example"]

    again = _run("certs", "init", "--out", str(out))
    assert again.exit_code == 1
    assert "refusing to overwrite" in again.output
    assert "[INVALID_ARGUMENT]" in again.output

    issued = _run("certs", "issue", "--ca-dir", str(out), "--name", "site-1", "--client")
    assert issued.exit_code == 0, issued.output
    assert _mode(out / "site-1.key") == 0o600
    cert = x509.load_pem_x509_certificate((out / "site-1.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=site-1"

    server_args = [
        "--ca-dir",
        str(out),
        "--name",
        "cmb",
        "--server",
        "--host",
        "cmb",
        "--days",
        "7",
    ]
    assert _run("certs", "issue", *server_args).exit_code == 0
    missing_ca = _run("certs", "issue", "--ca-dir", str(tmp_path / "none"), "--name", "x")
    assert missing_ca.exit_code == 1
    assert "does not exist" in missing_ca.output


def test_token_create(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ["--data-dir", str(data), "--role", "client", "--subject", "site-1"]
    result = CliRunner().invoke(
        root, ["token", "create", *args, "--expires", "1h", "--scope", "c1"]
    )
    assert result.exit_code == 0, result.output
    assert _mode(data / "keys" / "token.key") == 0o600
    token = result.stdout.strip()
    claims = controller_verifier(data).verify(token)
    assert (claims.subject, claims.role, claims.scope) == ("site-1", Role.CLIENT, "c1")
    assert claims.expires_at == claims.issued_at + 3600
    # The same key signs the next token (the pair is created once).
    second = CliRunner().invoke(root, ["token", "create", *args])
    assert controller_verifier(data).verify(second.stdout.strip()).expires_at is None

    bad_role = _run("token", "create", *args[:2], "--role", "root", "--subject", "x")
    assert bad_role.exit_code == 2
    bad_expiry = _run("token", "create", *args, "--expires", "soon")
    assert bad_expiry.exit_code == 2
    assert "not a positive duration" in bad_expiry.output
    bad_subject = _run("token", "create", *args[:4], "--subject", "a b")
    assert bad_subject.exit_code == 1
    assert "subject" in bad_subject.output


@pytest.mark.parametrize(
    ("text", "seconds"), [("3600", 3600), ("90s", 90), ("30m", 1800), ("1h", 3600), ("7d", 604800)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "1y", "h", "1.5h"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="positive duration"):
        parse_duration(text)


@pytest.mark.parametrize("daemon", ["combiner", "client"])
def test_token_file_is_read_and_refused_when_empty_or_doubled(daemon: str, tmp_path: Path) -> None:
    from fedgrpc.cli import main

    empty = tmp_path / "empty"
    empty.write_text("\n")
    runner = CliRunner()
    result = runner.invoke(main, [daemon, "start", "--token-file", str(empty), "--name", "x"])
    assert result.exit_code == 2
    assert "is empty" in result.output
    token = tmp_path / "token"
    token.write_text("abc\n")
    both = [daemon, "start", "--token", "abc", "--token-file", str(token), "--name", "x"]
    result = runner.invoke(main, both)
    assert result.exit_code == 2
    assert "not both" in result.output
    missing = [daemon, "start", "--token-file", str(tmp_path / "nope"), "--name", "x"]
    assert runner.invoke(main, missing).exit_code == 2
