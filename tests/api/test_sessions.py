"""Sessions and rounds: start, follow, continue, stop; FEDn's answers and typed errors."""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Iterator

import grpc
import pytest

from fedgrpc import errors
from fedgrpc.api import APIClient
from tests.api.conftest import ROUNDS, Network, Trained

pytestmark = pytest.mark.timeout(60)


class Terminal(io.StringIO):
    """Captured output that says it is a terminal, as a user's shell would."""

    def isatty(self) -> bool:
        return True


def test_start_session_answers_like_fedn(trained: Trained) -> None:
    started = trained.started
    assert set(started) == {"success", "message", "config", "session_id"}
    assert started["success"] is True
    assert started["session_id"] in started["message"]
    assert started["config"] == {
        "aggregator": "fedavg",
        "aggregator_kwargs": {},
        "model_id": trained.seed_model_id,
        "round_timeout": 20.0,
        "rounds": ROUNDS,
        "round_buffer_size": -1,
        "delete_models": True,
        "validate": True,
        "helper": "numpyhelper",
        "min_clients": 2,
        "requested_clients": 4,
        "client_settings": {},
        "round_failure_policy": "continue",
        "max_consecutive_failures": 3,
        "seed": 7,  # uint64: an int again, not JSON's string
    }


def test_wait_for_session_returns_the_ended_session_and_prints_nothing_off_a_terminal(
    api: APIClient, trained: Trained
) -> None:
    assert trained.printed == ""
    session = trained.session
    assert (session["status"], session["rounds_completed"], session["rounds_planned"]) == (
        "finished",
        ROUNDS,
        ROUNDS,
    )
    assert api.get_session(trained.session_id) == session
    assert api.get_session_status(trained.session_id) == "finished"
    assert api.session_is_finished(trained.session_id) is True


def test_progress_bar_on_a_terminal(api: APIClient, trained: Trained) -> None:
    terminal = Terminal()
    with contextlib.redirect_stdout(terminal):
        api.wait_for_session(trained.session_id, progress=True)
    shown = terminal.getvalue()
    assert shown.startswith(f"\rsession {trained.session_id} [")
    assert f"{ROUNDS}/{ROUNDS} rounds" in shown
    assert f"round {ROUNDS} success" in shown
    assert "accuracy=" in shown
    assert shown.endswith("finished\x1b[K\n")

    quiet = Terminal()
    with contextlib.redirect_stdout(quiet):
        api.wait_for_session(trained.session_id, progress=False)
    assert quiet.getvalue() == ""


def test_sessions_list_pages_and_count(api: APIClient, trained: Trained) -> None:
    sessions = api.get_sessions()
    assert sessions["count"] == api.get_sessions_count() >= 1
    assert trained.session_id in {s["id"] for s in sessions["result"]}
    page = api.get_sessions(n_max=1)
    assert (page["count"], len(page["result"])) == (sessions["count"], 1)


def test_rounds_record_every_client(api: APIClient, trained: Trained) -> None:
    rounds = api.get_rounds(session_id=trained.session_id)
    assert rounds["count"] == ROUNDS
    for record in rounds["result"]:
        assert (record["status"], record["num_updates"], record["total_weight"]) == (
            "success",
            2,
            400.0,
        )
        outcomes = {
            c["client_name"]: c["status"] for r in record["combiners"] for c in r["clients"]
        }
        assert outcomes == {
            "site-a": "ok",
            "site-b": "ok",
            "crashy": "failed",
            "misshapen": "rejected",
        }
        assert api.get_round(record["id"]) == record
    newest = api.get_rounds(n_max=1)
    assert len(newest["result"]) == 1
    assert newest["count"] == api.get_rounds_count() == api.get_rounds()["count"] >= ROUNDS


def test_continue_session_runs_more_rounds_quietly(
    api: APIClient, trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    session_id = f"api-continue-{uuid.uuid4().hex[:8]}"
    before = api.get_sessions_count()
    started = api.start_session(
        id=session_id, model_id=trained.seed_model_id, rounds=1, round_timeout=20, min_clients=2
    )
    assert started["session_id"] == session_id
    assert api.get_sessions_count() == before + 1
    assert api.wait_for_session(session_id, timeout=30)["rounds_completed"] == 1

    continued = api.continue_session(session_id, rounds=1, round_timeout=15)
    assert (continued["success"], continued["session_id"]) == (True, session_id)
    assert continued["config"]["round_timeout"] == 15.0
    ended = api.wait_for_session(session_id, timeout=30, progress=True)

    assert capsys.readouterr().out == ""  # progress=True, but pytest's capture is no terminal
    assert (ended["status"], ended["rounds_completed"], ended["rounds_planned"]) == (
        "finished",
        2,
        2,
    )
    trail = api.get_model_trail(id=ended["model_id"], reverse=False)
    assert [m["round_number"] for m in trail["result"]] == [0, 1, 2]
    with pytest.raises(errors.AlreadyExists) as caught:
        api.start_session(id=session_id, model_id=trained.seed_model_id)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    "settings",
    [{"aggregator": "no-such-aggregator"}, {"round_buffer_size": 0}, {"rounds": 0}],
)
def test_bad_session_settings_are_invalid_argument(
    api: APIClient, trained: Trained, settings: dict[str, object]
) -> None:
    before = api.get_sessions_count()
    with pytest.raises(errors.InvalidArgument) as caught:
        api.start_session(model_id=trained.seed_model_id, **settings)  # type: ignore[arg-type]
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert api.get_sessions_count() == before  # a refused request stores nothing


@contextlib.contextmanager
def held_round(network: Network) -> Iterator[None]:
    """site-a's train waits inside this block, so a round (and its session) stays running."""
    network.gate.close()
    try:
        yield
    finally:
        network.gate.open()


def test_one_session_at_a_time_timeout_and_stop(
    api: APIClient, network: Network, trained: Trained
) -> None:
    with held_round(network):
        started = api.start_session(
            model_id=trained.seed_model_id, rounds=3, round_timeout=30, min_clients=2
        )
        session_id = started["session_id"]
        assert api.get_session_status(session_id) == "running"
        assert api.session_is_finished(session_id) is False
        status = api.get_controller_status()
        assert (status["state"], status["active_session_id"]) == ("running", session_id)

        with pytest.raises(errors.FailedPrecondition) as second:
            api.start_session(model_id=trained.seed_model_id)
        assert second.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(errors.FailedPrecondition):
            api.continue_session(trained.session_id)
        with pytest.raises(errors.DeadlineExceeded) as late:
            api.wait_for_session(session_id, timeout=0.3)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

        stopped = api.stop_session(session_id)

    assert (stopped["id"], stopped["status"]) == (session_id, "stopped")
    assert api.wait_for_session(session_id, timeout=5)["status"] == "stopped"
    assert api.session_is_finished(session_id) is False
    rounds = api.get_rounds(session_id=session_id)["result"]
    assert [r["status"] for r in rounds] == ["aborted"]
    with pytest.raises(errors.FailedPrecondition):
        api.stop_session(session_id)
