"""End-to-end: controller, combiners and clients as separate processes, driven over gRPC.

Clients run :mod:`tests.e2e.clients`: client ``c<i>`` adds ``0.001 * (i + 1)`` to every weight
and reports ``100 * (i + 1)`` examples, so each committed model can be checked against a FedAvg
computed here from the round's input model.
"""

from __future__ import annotations

import collections
import collections.abc

import pytest

from fedgrpc.proto.control.v1 import control_pb2 as pb
from tests.e2e.harness import (
    ClientSpec,
    Cluster,
    ControlClient,
    check_committed_models,
    client_reports,
    seed_arrays,
    wait_until,
)

pytestmark = pytest.mark.e2e

SESSION_DEADLINE = 90.0


@pytest.fixture
def api_clients() -> collections.abc.Iterator[list[ControlClient]]:
    """Control clients opened by a test; closed afterwards."""
    opened: list[ControlClient] = []
    yield opened
    for client in opened:
        client.close()


def connect(opened: list[ControlClient], cluster: Cluster, address: str) -> ControlClient:
    api = ControlClient(address, cluster.admin_token)
    opened.append(api)
    return api


def test_fedavg_over_two_combiners(cluster: Cluster, api_clients: list[ControlClient]) -> None:
    controller = cluster.start_controller()
    api = connect(api_clients, cluster, controller.address)
    cluster.start_combiners(controller.address, ["combiner-a", "combiner-b"])
    api.wait_combiners_online(2)
    names = [f"c{i}" for i in range(4)]
    cluster.start_clients(controller.address, [ClientSpec(i) for i in range(4)])
    api.wait_clients_online(4)

    seed_id = api.seed(seed_arrays())
    session = api.start_session(
        rounds=3,
        round_timeout=30,
        min_clients=4,
        requested_clients=4,
        round_buffer_size=-1,
        validate=True,
    )
    session = api.wait_session_end(session.id, SESSION_DEADLINE)

    assert session.status == "finished", session.reason
    assert session.rounds_completed == 3
    rounds = api.rounds(session.id)
    assert [(r.round_number, r.status) for r in rounds] == [(n, "success") for n in (1, 2, 3)]
    committed = check_committed_models(
        api, rounds, seed_id=seed_id, expected_clients={n: set(names) for n in (1, 2, 3)}
    )
    assert session.model_id == committed[-1]

    # The trail, walked from the last model back to the seed.
    ancestors = api.control.GetModelAncestors(
        pb.ModelLineageRequest(model_id=committed[-1], include_self=True), timeout=10
    )
    assert [m.id for m in ancestors.result] == [*reversed(committed), seed_id]

    # The clients were spread over both combiners, and both took part in every round.
    placement = {c.name: c.combiner_name for c in api.clients(status="online")}
    assert set(placement) == set(names)
    assert collections.Counter(placement.values()) == {"combiner-a": 2, "combiner-b": 2}
    for round_ in rounds:
        assert sorted((c.name, c.status, c.num_updates) for c in round_.combiners) == [
            ("combiner-a", "ok", 2),
            ("combiner-b", "ok", 2),
        ]
        for combiner in round_.combiners:
            assert {c.client_name for c in combiner.clients} == {
                name for name, where in placement.items() if where == combiner.name
            }

    # Every client validated every committed model.
    for model_id in committed:
        found = api.control.ListValidations(
            pb.ListValidationsRequest(model_id=model_id), timeout=10
        )
        assert found.count == 4, model_id
        assert {v.sender_name for v in found.result} == set(names)
        assert {v.session_id for v in found.result} == {session.id}
        for validation in found.result:
            assert validation.metrics["client_index"] == int(validation.sender_name[1:])

    # SIGTERM stops every daemon cleanly and promptly.
    exit_codes = cluster.stop_all()
    assert exit_codes == dict.fromkeys(exit_codes, 0)
    assert not [d.name for d in cluster.daemons if d.needed_kill]


def test_client_killed_mid_round(cluster: Cluster, api_clients: list[ControlClient]) -> None:
    controller = cluster.start_controller()
    api = connect(api_clients, cluster, controller.address)
    cluster.start_combiners(controller.address, ["combiner-a"])
    api.wait_combiners_online(1)
    clients = cluster.start_clients(
        controller.address, [ClientSpec(0), ClientSpec(1), ClientSpec(2, behaviour="hang")]
    )
    api.wait_clients_online(3)

    seed_id = api.seed(seed_arrays())
    round_timeout = 25.0
    session = api.start_session(
        rounds=2,
        round_timeout=round_timeout,
        min_clients=2,
        requested_clients=3,
        round_buffer_size=-1,
        validate=False,
    )
    # c2 is inside train (and will stay there for 30 s): kill it without warning.
    marker = cluster.marker_dir / "c2.train-1"
    wait_until(marker.exists, timeout=30, what="c2 to start training")
    clients["c2"].kill()

    session = api.wait_session_end(session.id, SESSION_DEADLINE)
    assert session.status == "finished", session.reason
    rounds = api.rounds(session.id)
    assert [(r.round_number, r.status) for r in rounds] == [(1, "success"), (2, "success")]
    check_committed_models(
        api, rounds, seed_id=seed_id, expected_clients={1: {"c0", "c1"}, 2: {"c0", "c1"}}
    )
    first = rounds[0]
    assert client_reports(first)["c2"].status == "disconnected"
    # The round closed when c2's connection broke, not at the round timeout.
    assert first.duration_seconds < round_timeout
    assert set(client_reports(rounds[1])) == {"c0", "c1"}

    wait_until(
        lambda: api.client("c2").status == "offline",
        timeout=15,
        what="the killed client c2 to be marked offline",
    )
    assert {c.name for c in api.clients(status="online")} == {"c0", "c1"}


def test_combiner_killed_clients_move(cluster: Cluster, api_clients: list[ControlClient]) -> None:
    controller = cluster.start_controller()
    api = connect(api_clients, cluster, controller.address)
    combiners = cluster.start_combiners(controller.address, ["combiner-a", "combiner-b"])
    api.wait_combiners_online(2)
    names = {f"c{i}" for i in range(4)}
    cluster.start_clients(controller.address, [ClientSpec(i, train_seconds=1.0) for i in range(4)])
    api.wait_clients_online(4)
    placement = {c.name: c.combiner_name for c in api.clients(status="online")}
    moved = {name for name, where in placement.items() if where == "combiner-a"}
    assert moved, f"no client on combiner-a to move: {placement}"

    seed_id = api.seed(seed_arrays())
    session = api.start_session(
        rounds=3,
        round_timeout=20,
        min_clients=2,
        requested_clients=4,
        round_buffer_size=-1,
        validate=False,
    )

    def round_one_committed() -> bool:
        found = api.rounds(session.id)
        return bool(found) and found[0].status == "success"

    wait_until(round_one_committed, timeout=30, what="round 1 to commit")
    combiners[0].kill()

    def all_on_combiner_b() -> list[pb.Client] | None:
        online = api.clients(status="online")
        ok = {c.name for c in online} == names and all(
            c.combiner_name == "combiner-b" for c in online
        )
        return online if ok else None

    wait_until(all_on_combiner_b, timeout=20, what="all 4 clients online on combiner-b")
    status = api.controller_status()
    assert (status.combiners_online, status.clients_online) == (1, 4)
    combiner_a = api.control.GetCombiner(pb.GetCombinerRequest(id="combiner-a"), timeout=10)
    assert combiner_a.status == "offline"

    session = api.wait_session_end(session.id, SESSION_DEADLINE)
    assert session.status == "finished", session.reason
    rounds = api.rounds(session.id)
    assert [(r.round_number, r.status) for r in rounds] == [(n, "success") for n in (1, 2, 3)]
    check_committed_models(api, rounds, seed_id=seed_id, expected_clients={1: names})
    # By the last round the moved clients train through combiner-b.
    last = rounds[-1]
    assert [(c.name, c.status) for c in last.combiners] == [("combiner-b", "ok")]
    assert set(client_reports(last)) == names
    assert last.num_updates == 4


def test_train_that_raises(cluster: Cluster, api_clients: list[ControlClient]) -> None:
    controller = cluster.start_controller()
    api = connect(api_clients, cluster, controller.address)
    cluster.start_combiners(controller.address, ["combiner-a"])
    api.wait_combiners_online(1)
    clients = cluster.start_clients(
        controller.address, [ClientSpec(0), ClientSpec(1, behaviour="raise-first"), ClientSpec(2)]
    )
    api.wait_clients_online(3)

    seed_id = api.seed(seed_arrays())
    session = api.start_session(
        rounds=2,
        round_timeout=20,
        min_clients=2,
        requested_clients=3,
        round_buffer_size=-1,
        validate=False,
    )
    session = api.wait_session_end(session.id, SESSION_DEADLINE)
    assert session.status == "finished", session.reason
    rounds = api.rounds(session.id)
    assert [(r.round_number, r.status) for r in rounds] == [(1, "success"), (2, "success")]
    check_committed_models(
        api, rounds, seed_id=seed_id, expected_clients={1: {"c0", "c2"}, 2: {"c0", "c1", "c2"}}
    )
    failed = client_reports(rounds[0])["c1"]
    assert failed.status == "failed"
    assert "ValueError" in failed.message

    def task_failed_events() -> list[pb.Status]:
        found = api.control.ListStatuses(
            pb.ListStatusesRequest(session_id=session.id, event_type="task.failed"), timeout=10
        )
        return list(found.result)

    events = wait_until(task_failed_events, timeout=10, what="a task.failed status event")
    assert [(e.sender_name, e.round_id) for e in events] == [("c1", rounds[0].id)]
    assert "ValueError" in events[0].message

    # c1 survived its failure: still running, still online, and it trained in round 2.
    assert clients["c1"].alive
    assert api.client("c1").status == "online"
    assert client_reports(rounds[1])["c1"].status == "ok"
