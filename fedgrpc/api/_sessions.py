"""Sessions and their rounds: start, continue, stop, follow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedgrpc.api._base import COUNT_ONLY, APIBase, page
from fedgrpc.api._progress import wait_for_session
from fedgrpc.api._records import Record, to_dict, to_list
from fedgrpc.proto.control.v1 import control_pb2


def _started(session: control_pb2.Session, verb: str) -> Record:
    """FEDn's answer to starting a session, plus the session's full config."""
    return {
        "success": True,
        "message": f"session {session.id} {verb}",
        "config": to_dict(session)["config"],
        "session_id": session.id,
    }


class SessionMethods(APIBase):
    def get_session(self, id: str) -> Record:
        """One session. NotFound if there is none."""
        return to_dict(self.control.get_session(id=id))

    def get_sessions(self, n_max: int | None = None) -> Record:
        """Sessions, newest first: ``{"count", "result"}``."""
        return to_list(self.control.list_sessions(page=page(n_max)))

    def get_sessions_count(self) -> int:
        """How many sessions are stored."""
        return int(self.control.list_sessions(page=COUNT_ONLY).count)

    def get_session_status(self, id: str) -> str:
        """``created``, ``running``, ``finished``, ``failed`` or ``stopped``."""
        return str(self.control.get_session(id=id).status)

    def session_is_finished(self, id: str) -> bool:
        """True once the session finished all its rounds (not when it failed or stopped)."""
        return self.get_session_status(id) == "finished"

    def start_session(
        self,
        id: str | None = None,
        aggregator: str = "fedavg",
        aggregator_kwargs: Mapping[str, Any] | None = None,
        model_id: str | None = None,
        round_timeout: float = 180,
        rounds: int = 5,
        round_buffer_size: int = -1,
        delete_models: bool = True,
        validate: bool = True,
        helper: str = "numpyhelper",
        min_clients: int = 1,
        requested_clients: int = 8,
        *,
        client_settings: Mapping[str, Any] | None = None,
        seed: int | None = None,
        round_failure_policy: str | None = None,
        max_consecutive_failures: int | None = None,
    ) -> Record:
        """Start a training session from ``model_id`` (default: the active model).

        FEDn's arguments and defaults; beyond them, ``client_settings`` (passed to the clients'
        ``train``), ``seed`` (client sampling), ``round_failure_policy`` and
        ``max_consecutive_failures``. Returns ``{"success": True, "message", "config",
        "session_id"}``; FailedPrecondition while another session runs.
        """
        session = self.control.start_session(
            id=id or "",
            aggregator=aggregator,
            aggregator_kwargs=aggregator_kwargs,
            model_id=model_id or None,
            round_timeout=float(round_timeout),
            rounds=rounds,
            round_buffer_size=round_buffer_size,
            delete_models=delete_models,
            validate=validate,
            helper=helper,
            min_clients=min_clients,
            requested_clients=requested_clients,
            client_settings=client_settings,
            seed=seed,
            round_failure_policy=round_failure_policy,
            max_consecutive_failures=max_consecutive_failures,
        )
        return _started(session, "started")

    def continue_session(
        self, id: str, rounds: int | None = None, round_timeout: float | None = None
    ) -> Record:
        """Run more rounds (default: the configured number) of an ended session from its last
        model. Same answer as :meth:`start_session`."""
        session = self.control.continue_session(
            session_id=id,
            rounds=rounds,
            round_timeout=None if round_timeout is None else float(round_timeout),
        )
        return _started(session, "continued")

    def stop_session(self, id: str) -> Record:
        """Stop a running session (its round in flight is aborted); the final session record."""
        return to_dict(self.control.stop_session(session_id=id))

    def wait_for_session(
        self, id: str, timeout: float | None = None, progress: bool = True
    ) -> Record:
        """Wait until the session has ended (finished, failed or stopped); its final record.

        With ``progress`` and a terminal on stdout, a one-line bar (rounds done/planned, the
        round in flight, the newest validation metric) is rewritten in place; nothing is
        printed otherwise. DeadlineExceeded after ``timeout`` seconds.
        """
        return wait_for_session(self.control, id, timeout=timeout, progress=progress)

    def get_round(self, id: str) -> Record:
        """One round, with each combiner's and client's part. NotFound if there is none."""
        return to_dict(self.control.get_round(id=id))

    def get_rounds(self, n_max: int | None = None, session_id: str | None = None) -> Record:
        """Rounds, newest first, optionally of one session: ``{"count", "result"}``."""
        return to_list(self.control.list_rounds(page=page(n_max), session_id=session_id or None))

    def get_rounds_count(self) -> int:
        """How many rounds are stored."""
        return int(self.control.list_rounds(page=COUNT_ONLY).count)
