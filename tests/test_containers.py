"""The container files stay consistent with the CLI (no Docker engine is needed to check)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fedgrpc.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
FEDGRPC_SERVICES = {
    n: s for n, s in COMPOSE["services"].items() if "build" in s or "<<" in s or n != "mongo"
}


DAEMONS = sorted(n for n in FEDGRPC_SERVICES if n not in ("mongo", "tokens"))


def minted_tokens() -> dict[str, str]:
    """subject -> role for every `fedgrpc token create` the one-shot tokens service runs."""
    script = COMPOSE["services"]["tokens"]["command"][0]
    minted: dict[str, str] = {}
    for loop in re.finditer(r"for name in ([^;]+); do\n\s*(fedgrpc token create [^\n]+)", script):
        for subject in loop.group(1).split():
            line = loop.group(2).replace('"$$name"', subject).split(">")[0]
            args = shlex.split(line)[1:]
            result = CliRunner().invoke(main, [*args, "--help"])
            assert result.exit_code == 0, f"{line}: {result.output}"
            minted[subject] = args[args.index("--role") + 1]
    return minted


def test_tokens_service_mints_a_token_for_every_daemon_that_reads_one() -> None:
    minted = minted_tokens()
    for name in DAEMONS:
        command = COMPOSE["services"][name]["command"]
        if name == "controller":
            continue
        assert "--token-file" in command, f"{name} starts without a token: auth is on"
        path = command[command.index("--token-file") + 1]
        subject = command[command.index("--name") + 1]
        assert path == f"/tokens/{subject}", name
        assert minted.get(subject) == command[0], f"{name}: no {command[0]} token minted"
        assert "tokens:/tokens:ro" in COMPOSE["services"][name]["volumes"], name


@pytest.mark.parametrize("name", DAEMONS)
def test_every_service_command_parses(name: str) -> None:
    command = COMPOSE["services"][name]["command"]
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, f"{name}: {command}: {result.output}"
    if "start" in command and "--host" in command:  # a daemon other hosts can reach
        host = command[command.index("--host") + 1]
        tls_or_opt_out = "--tls-cert" in command or "--insecure" in command
        assert host in ("127.0.0.1", "localhost") or tls_or_opt_out, f"{name} would refuse to start"


def test_referenced_package_exists_and_controller_uses_mongo() -> None:
    for service in COMPOSE["services"].values():
        command = service.get("command", [])
        if "--package" in command:
            package = command[command.index("--package") + 1]
            local = ROOT / package.removeprefix("/opt/fedgrpc/")
            assert (local / "fedgrpc.yaml").is_file(), package
    controller = COMPOSE["services"]["controller"]["command"]
    assert controller[controller.index("--mongo-uri") + 1].startswith("mongodb://mongo")
    assert COMPOSE["services"]["mongo"]["image"].startswith("mongo:")


def test_dockerfile_runs_as_non_root_with_a_grpc_health_check() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nUSER fedgrpc\n" in dockerfile
    assert "HEALTHCHECK" in dockerfile
    assert "fedgrpc health" in dockerfile
    assert "--no-cache-dir" in dockerfile
    result = CliRunner().invoke(main, ["health", "--help"])
    assert result.exit_code == 0
