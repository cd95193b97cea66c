"""Status events and validations: every filter, pages, counts and single records.

Each filter is checked against the same selection done here on the session's full list, and
each selection is non-empty (or, for a value nobody has, empty), so a filter the server
ignored or applied wrongly shows up.
"""

from __future__ import annotations

from typing import Any

import pytest

from fedgrpc.api import APIClient
from tests.api.conftest import ROUNDS, Trained, eventually

pytestmark = pytest.mark.timeout(60)

Records = list[dict[str, Any]]


def ids(records: Records) -> set[str]:
    return {r["id"] for r in records}


@pytest.fixture(scope="module")
def statuses(api: APIClient, trained: Trained) -> Records:
    """The session's status events, once they have all been written."""

    def complete() -> Records:
        found: Records = api.get_statuses(session_id=trained.session_id)["result"]
        # Per round: crashy's failed train and validate, misshapen's rejected update.
        return found if len({(s["round_id"], s["event_type"]) for s in found}) >= 2 * ROUNDS else []

    return eventually(complete, what="the session's status events")


@pytest.fixture(scope="module")
def validations(api: APIClient, trained: Trained) -> Records:
    found: Records = api.get_validations(session_id=trained.session_id)["result"]
    return found


@pytest.mark.parametrize(
    ("filters", "keeps"),
    [
        ({"event_type": "update.rejected"}, lambda s: s["event_type"] == "update.rejected"),
        ({"sender_name": "crashy"}, lambda s: s["sender_name"] == "crashy"),
        ({"sender_role": "combiner"}, lambda s: s["sender_role"] == "combiner"),
        (
            {"event_type": "task.failed", "sender_role": "client"},
            lambda s: s["event_type"] == "task.failed" and s["sender_role"] == "client",
        ),
    ],
)
def test_status_filters(
    api: APIClient, trained: Trained, statuses: Records, filters: dict[str, Any], keeps: Any
) -> None:
    expected = [s for s in statuses if keeps(s)]
    assert expected, "the network should have produced such events"
    found = api.get_statuses(session_id=trained.session_id, **filters)
    assert found["count"] == len(expected)
    assert ids(found["result"]) == ids(expected)


def test_status_filter_with_no_match_and_session_filter(
    api: APIClient, trained: Trained, statuses: Records
) -> None:
    assert api.get_statuses(session_id=trained.session_id, sender_name="nobody")["count"] == 0
    assert all(s["session_id"] == trained.session_id for s in statuses)
    everything = api.get_statuses()
    # Events only ever get added, so later counts can only be larger.
    assert api.get_statuses_count() >= everything["count"] >= len(statuses)
    assert api.get_statuses(session_id="no-such-session") == {"count": 0, "result": []}


def test_status_pages_and_single_record(
    api: APIClient, trained: Trained, statuses: Records
) -> None:
    page = api.get_statuses(session_id=trained.session_id, n_max=2)
    assert (page["count"], len(page["result"])) == (len(statuses), 2)
    one = api.get_status(statuses[0]["id"])
    assert one == statuses[0]
    assert one["data"] is None  # an unset Struct is present, as None
    assert one["log_level"] == "WARNING"


def test_empty_filters_mean_any_as_in_fedn(
    api: APIClient, trained: Trained, statuses: Records
) -> None:
    found = api.get_statuses(session_id=trained.session_id, event_type="", sender_name="")
    assert found["count"] == len(statuses)


def test_validations_of_the_session(trained: Trained, validations: Records) -> None:
    # Each round's model is validated by the three clients that have a validate function.
    assert len(validations) == 3 * ROUNDS
    by_sender = {v["sender_name"]: v["metrics"] for v in validations}
    assert by_sender == {
        "site-a": {"accuracy": 0.75},
        "site-b": {"accuracy": 0.25},
        "misshapen": {"accuracy": 0.5},
    }


@pytest.mark.parametrize(
    "field",
    ["model_id", "correlation_id", "sender_name", "sender_role", "receiver_name", "receiver_role"],
)
def test_validation_filters(
    api: APIClient, trained: Trained, validations: Records, field: str
) -> None:
    value: Any = validations[0][field]
    expected = [v for v in validations if v[field] == value]
    found = api.get_validations(session_id=trained.session_id, **{field: value})
    assert found["count"] == len(expected) >= 1
    assert ids(found["result"]) == ids(expected)
    unmatched: dict[str, Any] = {field: "no-such-value"}
    nothing = api.get_validations(session_id=trained.session_id, **unmatched)
    assert nothing == {"count": 0, "result": []}


def test_validation_filters_narrow(api: APIClient, trained: Trained, validations: Records) -> None:
    final = trained.session["model_id"]
    of_final = api.get_validations(model_id=final, receiver_name="combiner-b")
    assert sorted(v["sender_name"] for v in of_final["result"]) == ["misshapen", "site-b"]
    assert api.get_validations(session_id=trained.session_id, sender_role="combiner")["count"] == 0


def test_validation_pages_counts_and_single_record(
    api: APIClient, trained: Trained, validations: Records
) -> None:
    page = api.get_validations(session_id=trained.session_id, n_max=1)
    assert (page["count"], len(page["result"])) == (len(validations), 1)
    assert api.get_validations_count() == api.get_validations()["count"] >= len(validations)
    assert api.get_validation(validations[-1]["id"]) == validations[-1]
