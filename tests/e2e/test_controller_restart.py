"""End-to-end: the controller is SIGKILLed mid-session and restarted on the same data dir.

One run of the scenario (module-scoped, it is the slowest one) is checked by several tests.
The controller needs a fixed port here, the only place in the suite: combiners and clients
keep dialling the address they were started with, so the restarted controller must come back
on it (see :func:`tests.e2e.harness.free_port`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fedgrpc.proto.control.v1 import control_pb2 as pb
from tests.e2e.harness import (
    ClientSpec,
    Cluster,
    ControlClient,
    check_committed_models,
    free_port,
    seed_arrays,
    wait_until,
)

pytestmark = pytest.mark.e2e

ROUND_TIMEOUT = 10.0
TRAIN_SECONDS = 1.5
CLIENT_NAMES = {f"c{i}" for i in range(4)}


@dataclass(frozen=True)
class RestartRun:
    api: ControlClient  # connected to the restarted controller
    seed_id: str
    session: pb.Session  # as it ended
    rounds: list[pb.Round]


@pytest.fixture(scope="module")
def restart_run(module_cluster: Cluster) -> Iterator[RestartRun]:
    cluster = module_cluster
    port = free_port()
    data_dir = cluster.root / "controller-data"
    controller = cluster.start_controller(data_dir=data_dir, port=port)
    address = controller.address
    assert address.endswith(f":{port}")
    api = ControlClient(address, cluster.admin_token)
    try:
        cluster.start_combiners(address, ["combiner-a", "combiner-b"])
        api.wait_combiners_online(2)
        cluster.start_clients(
            address, [ClientSpec(i, train_seconds=TRAIN_SECONDS) for i in range(4)]
        )
        api.wait_clients_online(4)
        seed_id = api.seed(seed_arrays())
        session = api.start_session(
            rounds=4,
            round_timeout=ROUND_TIMEOUT,
            min_clients=4,
            requested_clients=4,
            round_buffer_size=-1,
            validate=False,
        )

        def round_two_running() -> bool:
            found = api.rounds(session.id)
            return len(found) >= 2 and found[1].status == "running"

        # Round 2 stays running for at least TRAIN_SECONDS: polling every 50 ms cannot miss it.
        wait_until(round_two_running, timeout=30, what="round 2 to start", interval=0.05)
        controller.kill()
    finally:
        api.close()

    restarted = cluster.start_controller(data_dir=data_dir, port=port, label="controller-again")
    assert restarted.address == address
    api = ControlClient(address, cluster.admin_token)
    try:
        ended = api.wait_session_end(session.id, timeout=90)
        yield RestartRun(api=api, seed_id=seed_id, session=ended, rounds=api.rounds(session.id))
    finally:
        api.close()


def test_session_resumes_after_controller_restart(restart_run: RestartRun) -> None:
    session, rounds, api = restart_run.session, restart_run.rounds, restart_run.api
    assert session.status == "finished", session.reason
    assert [(r.round_number, r.status) for r in rounds] == [
        (1, "success"),
        (2, "aborted"),
        (3, "success"),
        (4, "success"),
        (5, "success"),
    ]
    interrupted = rounds[1]
    assert "restart" in interrupted.reason
    assert not interrupted.committed_model_id
    assert sum(r.status == "success" for r in rounds) == 4
    assert session.rounds_completed == 4
    # The session resumed from the last committed model: round 3 starts where round 1 ended.
    assert rounds[2].model_id == rounds[0].committed_model_id
    committed = check_committed_models(
        api,
        rounds,
        seed_id=restart_run.seed_id,
        expected_clients={n: CLIENT_NAMES for n in (1, 3, 4, 5)},
    )
    assert session.model_id == committed[-1]
    status = api.controller_status()
    assert (status.state, status.combiners_online, status.clients_online) == ("idle", 2, 4)
    online = api.clients(status="online")
    assert {c.name for c in online} == CLIENT_NAMES


def test_first_round_after_restart_does_not_wait_out_its_timeout(
    restart_run: RestartRun,
) -> None:
    first_after_restart = restart_run.rounds[2]
    assert first_after_restart.round_number == 3
    # Combiners re-link within about a second, then training takes TRAIN_SECONDS.
    assert first_after_restart.duration_seconds < ROUND_TIMEOUT, (
        f"round 3 took {first_after_restart.duration_seconds:.1f}s with round_timeout "
        f"{ROUND_TIMEOUT:g}s"
    )
