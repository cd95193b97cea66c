"""The container files stay consistent with the CLI (no Docker engine is needed to check)."""

from __future__ import annotations

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


@pytest.mark.parametrize("name", sorted(n for n in FEDGRPC_SERVICES if n != "mongo"))
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
