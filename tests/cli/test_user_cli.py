"""The user CLI against a real network of daemon processes: click's runner and subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import numpy as np
import pytest
from click.testing import CliRunner

from fedgrpc import APIClient
from fedgrpc.cli import main
from fedgrpc.errors import Unauthenticated
from fedgrpc.launch import Daemon, start_daemon
from fedgrpc.model.serialization import dump_model, load_model
from fedgrpc.security.keystore import mint_token, read_admin_token
from fedgrpc.security.tokens import Role

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST = {
    "FEDGRPC_CONTROLLER_HEARTBEAT_INTERVAL": "0.3",
    "FEDGRPC_CONTROLLER_HEARTBEAT_TIMEOUT": "3",
    "FEDGRPC_COMBINER_HEARTBEAT_INTERVAL": "0.3",
    "FEDGRPC_COMBINER_HEARTBEAT_TIMEOUT": "3",
    "FEDGRPC_CLIENT_HEARTBEAT_INTERVAL": "0.3",
    "PYTHONPATH": str(REPO_ROOT),
}


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A controller, a combiner and two clients (tests.e2e.clients) as processes."""
    base = tmp_path_factory.mktemp("cli-network")
    logs = base / "logs"
    keys = base / "data"
    daemons: list[Daemon] = []
    patch = pytest.MonkeyPatch()
    try:
        daemons.append(
            start_daemon(
                "controller",
                ["controller", "start", "--port", "0", "--data-dir", str(keys)],
                log_dir=logs,
                env=FAST,
            )
        )
        address = daemons[0].address
        # What an operator does: export the admin token for the CLI and APIClient.
        patch.setenv("FEDGRPC_AUTH_TOKEN", read_admin_token(keys))
        combiner_token = mint_token(keys, "comb-a", Role.COMBINER)
        daemons.append(
            start_daemon(
                "combiner",
                ["combiner", "start", "--controller", address, "--name", "comb-a"],
                log_dir=logs,
                env={**FAST, "FEDGRPC_COMBINER_TOKEN": combiner_token},
            )
        )
        for index in range(2):
            env = {
                **FAST,
                "FEDGRPC_TEST_CLIENT_INDEX": str(index),
                "FEDGRPC_CLIENT_TOKEN": mint_token(keys, f"c{index}", Role.CLIENT),
            }
            args = ["client", "start", "--controller", address, "--name", f"c{index}"]
            args += ["--data-dir", str(base / "nodes" / f"c{index}")]
            daemons.append(
                start_daemon(
                    f"c{index}", [*args, "--entry", "tests.e2e.clients"], log_dir=logs, env=env
                )
            )
        with APIClient(address) as api:  # a client is "ready" before it has connected
            deadline = time.monotonic() + 30
            while api.get_controller_status()["clients_online"] < 2:
                assert time.monotonic() < deadline, "clients did not connect"
                time.sleep(0.1)
        yield address
    finally:
        for daemon in reversed(daemons):
            daemon.stop()
        patch.undo()


def cli(controller: str, *args: str) -> Any:
    """Run a command through click's runner with --json and parse its output."""
    result = CliRunner().invoke(main, [*args, "--controller", controller, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def run_subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedgrpc", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_session_lifecycle_through_the_cli(controller: str, tmp_path: Path) -> None:
    seed = tmp_path / "seed.safetensors"
    seed.write_bytes(dump_model([np.zeros(3, dtype=np.float32)]))
    seeded = cli(controller, "model", "set-active", str(seed))
    assert seeded["success"] is True

    with APIClient(controller) as api:
        assert api.get_active_clients()["count"] == 2

    started = run_subprocess(
        "session",
        "start",
        "--controller",
        controller,
        "--rounds",
        "2",
        "--min-clients",
        "2",
        "--requested-clients",
        "2",
        "--round-timeout",
        "30",
        "--wait",
        "--json",
    )
    assert started.returncode == 0, started.stderr
    session = json.loads(started.stdout)
    assert (session["status"], session["rounds_completed"]) == ("finished", 2)

    sessions = cli(controller, "session", "list")
    assert sessions["count"] == 1
    assert cli(controller, "session", "get", session["id"])["status"] == "finished"
    rounds = cli(controller, "round", "list", "--session-id", session["id"])
    assert sorted(r["round_number"] for r in rounds["result"]) == [1, 2]
    one_round = cli(controller, "round", "get", rounds["result"][0]["id"])
    assert one_round["status"] == "success"
    models = cli(controller, "model", "list", "--session-id", session["id"])
    assert models["count"] == 2
    trail = cli(controller, "model", "trail")
    assert trail["count"] == 3  # two rounds' models and the seed
    validations = cli(controller, "validation", "list", "--model-id", session["model_id"])
    assert validations["count"] == 2
    statuses = cli(controller, "status", "list")
    assert isinstance(statuses["result"], list)

    target = tmp_path / "final.safetensors"
    result = CliRunner().invoke(
        main, ["model", "download", session["model_id"], str(target), "--controller", controller]
    )
    assert result.exit_code == 0, result.output
    expected = 2 * np.average([0.001, 0.002], weights=[100, 200])
    np.testing.assert_allclose(load_model(target.read_bytes())["0"], [expected] * 3, rtol=1e-5)


def test_tables_are_readable(controller: str) -> None:
    result = CliRunner().invoke(main, ["session", "list", "--controller", controller])
    assert result.exit_code == 0
    header = result.output.splitlines()[0]
    assert header.split()[:3] == ["ID", "NAME", "STATUS"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("session", "get", "no-such-session"), "not found"),
        (("model", "get", "no-such-model"), "not found"),
        (("session", "stop", "no-such-session"), "not found"),
        (("session", "start", "--aggregator-kwargs", "{nope"), "not valid JSON"),
        (("session", "start", "--aggregator", "fedmagic"), "fedmagic"),
    ],
)
def test_user_mistakes_give_one_line_and_non_zero_exit(
    controller: str, args: tuple[str, ...], message: str
) -> None:
    proc = run_subprocess(*args, "--controller", controller)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert any(message in line for line in lines), proc.stderr
    assert len(lines) <= 3  # click's usage hint may precede the one error line


def test_unreachable_controller_and_bad_file(tmp_path: Path) -> None:
    proc = run_subprocess("session", "list", "--controller", "127.0.0.1:1")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("Error: cannot reach the controller at 127.0.0.1:1")
    assert "Traceback" not in proc.stderr
    missing = run_subprocess("model", "set-active", str(tmp_path / "missing.safetensors"))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr


def test_network_and_package_commands(controller: str, tmp_path: Path) -> None:
    status = cli(controller, "controller", "status")
    assert (status["clients_online"], status["combiners_online"]) == (2, 1)
    combiners = cli(controller, "combiner", "list")
    assert [c["name"] for c in combiners["result"]] == ["comb-a"]
    assert cli(controller, "combiner", "get", "comb-a")["status"] == "online"
    clients = cli(controller, "client", "list", "--online")
    assert sorted(c["name"] for c in clients["result"]) == ["c0", "c1"]
    assert cli(controller, "client", "get", "c1")["combiner_name"] == "comb-a"

    tarball = tmp_path / "digits.tar.gz"
    created = run_subprocess(
        "package", "create", str(REPO_ROOT / "examples" / "digits-package"), "-o", str(tarball)
    )
    assert created.returncode == 0, created.stderr
    uploaded = cli(controller, "package", "set-active", str(tarball))
    assert uploaded["success"] is True
    assert cli(controller, "package", "list")["count"] == 1
    active = cli(controller, "package", "get")
    assert (active["id"], active["active"]) == (uploaded["package_id"], True)
    target = tmp_path / "copy.tar.gz"
    result = CliRunner().invoke(
        main, ["package", "download", str(target), "--controller", controller]
    )
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == tarball.read_bytes()


def test_tokens_are_created_and_revoked_through_the_cli(controller: str) -> None:
    runner = CliRunner()
    args = ["--role", "user", "--subject", "analyst", "--expires", "1h", "--controller", controller]
    created = runner.invoke(main, ["token", "create", *args])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    token_id = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert token_id in created.stderr
    with APIClient(controller, token=token) as api:
        assert api.get_controller_status()["clients_online"] == 2
    revoked = runner.invoke(main, ["token", "revoke", token_id, "--controller", controller])
    assert revoked.exit_code == 0, revoked.output
    with APIClient(controller, token=token) as api, pytest.raises(Unauthenticated):
        api.get_controller_status()
    # The revoked token is refused for everything: one line, non-zero exit.
    refused = runner.invoke(main, ["token", "create", *args, "--token", token])
    assert refused.exit_code != 0
    assert "UNAUTHENTICATED" in refused.output
