"""Clients, combiners, the controller's status and typed errors, through APIClient."""

from __future__ import annotations

import grpc
import pytest

from fedgrpc import errors
from fedgrpc.api import APIClient
from fedgrpc.api._connection import DEFAULT_PORT
from tests.api.conftest import CLIENT_NAMES, Network, eventually

pytestmark = pytest.mark.timeout(60)


def test_controller_status_counts_what_is_connected(api: APIClient) -> None:
    status = api.get_controller_status()
    assert status["combiners_online"] == 2
    assert status["clients_online"] == len(CLIENT_NAMES)
    assert status["state"] in ("idle", "running")
    assert set(status) == {
        "state",
        "version",
        "active_session_id",
        "combiners_online",
        "clients_online",
        "active_model_id",
    }


def test_clients_list_page_and_count(api: APIClient) -> None:
    everyone = api.get_clients()
    assert everyone["count"] == len(CLIENT_NAMES) == api.get_clients_count()
    assert sorted(c["name"] for c in everyone["result"]) == sorted(CLIENT_NAMES)
    first_two = api.get_clients(n_max=2)
    assert first_two["count"] == len(CLIENT_NAMES)  # the total, not the page size
    assert len(first_two["result"]) == 2


def test_client_by_name_and_by_id(api: APIClient) -> None:
    by_name = api.get_client("site-a")
    assert (by_name["name"], by_name["status"], by_name["combiner_name"]) == (
        "site-a",
        "online",
        "combiner-a",
    )
    assert isinstance(by_name["tags"], list)
    assert api.get_client(by_name["id"]) == by_name


def test_active_clients_per_combiner(api: APIClient) -> None:
    online = api.get_active_clients()
    assert online["count"] == len(CLIENT_NAMES)
    assert all(c["status"] == "online" for c in online["result"])
    on_b = api.get_active_clients(combiner_id="combiner-b")
    assert sorted(c["name"] for c in on_b["result"]) == ["misshapen", "site-b"]
    combiner_a_id = api.get_combiner("combiner-a")["id"]
    on_a = api.get_active_clients(combiner_id=combiner_a_id, n_max=1)  # by id works too
    assert on_a["count"] == 2
    assert [c["combiner_name"] for c in on_a["result"]] == ["combiner-a"]


def test_combiners_list_page_count_and_get(api: APIClient) -> None:
    combiners = api.get_combiners()
    assert combiners["count"] == 2 == api.get_combiners_count()
    assert sorted(c["name"] for c in combiners["result"]) == ["combiner-a", "combiner-b"]
    assert len(api.get_combiners(n_max=1)["result"]) == 1
    combiner = api.get_combiner("combiner-b")
    assert combiner["status"] == "online"
    assert api.get_combiner(combiner["id"])["name"] == "combiner-b"
    # The count comes with the combiner's heartbeats, so it may lag a connect by one beat.
    eventually(
        lambda: api.get_combiner("combiner-b")["connected_clients"] == 2,
        what="combiner-b's heartbeat to report its 2 clients",
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda api: api.get_client("no-such-client"),
        lambda api: api.get_combiner("no-such-combiner"),
        lambda api: api.get_active_clients(combiner_id="no-such-combiner"),
        lambda api: api.get_model("no-such-model"),
        lambda api: api.get_model_trail(id="no-such-model"),
        lambda api: api.get_model_ancestors("no-such-model"),
        lambda api: api.get_model_descendants("no-such-model"),
        lambda api: api.get_session("no-such-session"),
        lambda api: api.get_session_status("no-such-session"),
        lambda api: api.session_is_finished("no-such-session"),
        lambda api: api.continue_session("no-such-session"),
        lambda api: api.get_round("no-such-round"),
        lambda api: api.get_status("no-such-status"),
        lambda api: api.get_validation("no-such-validation"),
        lambda api: api.start_session(model_id="no-such-model"),
    ],
)
def test_unknown_ids_raise_not_found(api: APIClient, call: object) -> None:
    with pytest.raises(errors.NotFound) as caught:
        call(api)  # type: ignore[operator]
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert isinstance(caught.value.__cause__, grpc.RpcError)


def test_bad_page_is_invalid_argument(api: APIClient) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        api.get_sessions(n_max=-1)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unreachable_controller_is_unavailable(network: Network) -> None:
    with APIClient("127.0.0.1", port=1) as api, pytest.raises(errors.Unavailable) as caught:
        api.get_controller_status()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_address_forms_reach_the_same_controller(network: Network) -> None:
    host, port = network.address.rsplit(":", 1)
    token = network.local.admin_token
    for api in (
        APIClient(network.address, token=token),
        APIClient(host, port=int(port), token=token),
        APIClient(f"grpc://{network.address}", token=token),
    ):
        with api:
            assert api.port == int(port)
            assert api.get_controller_status()["combiners_online"] == 2
    assert APIClient("example.invalid").port == DEFAULT_PORT
