"""A combiner with many clients asks new ones to beat less often, and keeps them connected."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrpc.combiner.services import heartbeat_pace
from tests.integration.conftest import LocalNetwork, eventually, shift_train


@pytest.mark.parametrize(
    ("clients", "expected"),
    [
        (0, (5.0, 20.0)),
        (1000, (5.0, 20.0)),  # 1,000 clients at 5 s: exactly 200 a second
        (1001, (5.005, 20.02)),
        (16_000, (80.0, 320.0)),
    ],
)
def test_pace_stretches_interval_and_timeout_alike_past_the_budget(
    clients: int, expected: tuple[float, float]
) -> None:
    assert heartbeat_pace(clients, 5.0, 20.0, 200.0) == pytest.approx(expected)


async def test_every_client_follows_the_pace_as_clients_come_and_go(
    local_network: LocalNetwork,
) -> None:
    net = local_network
    # 0.2 s x 5 a second = one client at the configured pace; n clients beat every n x 0.2 s.
    combiner = await net.add_combiner("alpha", max_client_heartbeats_per_second=5.0)
    clients = [await net.add_client(name, shift_train(1.0)) for name in "abcd"]

    def paces() -> list[tuple[float, float]]:
        return [(round(c.heartbeat_interval, 6), round(c.heartbeat_timeout, 6)) for c in clients]

    # Welcomed at 0.2, 0.4, 0.6 and 0.8 s; the combiner's heartbeats then set all four alike.
    await eventually(lambda: paces() == [(0.8, 8.0)] * 4, what="every client at 4 x 0.2 s")
    # Stretched, they still beat (and stay connected) and take part in a round like the rest.
    assert combiner.core is not None
    connection = combiner.core.clients.get("d")
    assert connection is not None
    beats = connection.last_seen
    await eventually(lambda: connection.last_seen > beats, what="a heartbeat from d")
    await net.upload_seed([np.zeros(3, dtype=np.float32)])
    session_id = await net.start_session(
        rounds=1, round_timeout=30, requested_clients=4, min_clients=4, validate=False
    )
    session = await net.wait_session(session_id, timeout=20)
    assert session.status == "finished", session.reason
    (round_,) = await net.rounds(session_id)
    assert sorted(c.client_name for c in round_.combiners[0].clients) == list("abcd")
    # One leaves: the others are told the shorter pace of three.
    await net.stop_client("d")
    clients.pop()
    await eventually(lambda: paces() == [(0.6, 6.0)] * 3, what="the pace of three clients")
