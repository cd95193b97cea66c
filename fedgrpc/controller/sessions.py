"""Starting, continuing, stopping and resuming sessions; at most one runs at a time."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any

from fedgrpc.aggregators import get_aggregator
from fedgrpc.controller.network import Network
from fedgrpc.controller.session_runner import SessionRunner
from fedgrpc.errors import FailedPrecondition, InvalidArgument, NotFound
from fedgrpc.statestore import Record

log = logging.getLogger(__name__)

# FEDn's start_session defaults, plus our failure policy.
SESSION_DEFAULTS: dict[str, Any] = {
    "aggregator": "fedavg",
    "aggregator_kwargs": {},
    "round_timeout": 180.0,
    "rounds": 5,
    "round_buffer_size": -1,
    "delete_models": True,
    "validate": True,
    "helper": "numpyhelper",
    "min_clients": 1,
    "requested_clients": 8,
    "client_settings": {},
    "round_failure_policy": "continue",
    "max_consecutive_failures": 3,
    "seed": 0,
}
FAILURE_POLICIES = ("continue", "stop")
TERMINAL = ("finished", "failed", "stopped")


def session_config(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in and every value checked; raises InvalidArgument naming the field."""
    unknown = set(settings) - set(SESSION_DEFAULTS) - {"model_id"}
    if unknown:
        raise InvalidArgument(f"unknown session setting(s): {', '.join(sorted(unknown))}")
    config = {**SESSION_DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    _require(config["rounds"] >= 1, "rounds must be at least 1")
    timeout = float(config["round_timeout"])
    _require(
        math.isfinite(timeout) and timeout > 0, "round_timeout must be a positive number of seconds"
    )
    _require(config["min_clients"] >= 1, "min_clients must be at least 1")
    _require(config["requested_clients"] >= 1, "requested_clients must be at least 1")
    _require(
        config["requested_clients"] >= config["min_clients"],
        "requested_clients must be at least min_clients, or no round could ever succeed",
    )
    buffer = config["round_buffer_size"]
    _require(
        buffer == -1 or buffer >= 1, "round_buffer_size must be -1 (all sampled clients) or >= 1"
    )
    _require(
        config["round_failure_policy"] in FAILURE_POLICIES,
        f"round_failure_policy must be one of {', '.join(FAILURE_POLICIES)}",
    )
    get_aggregator(
        config["aggregator"], config["aggregator_kwargs"]
    )  # unknown name/kwargs fail here
    return config


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidArgument(message)


class SessionManager:
    def __init__(self, network: Network) -> None:
        self.network = network
        self.store = network.store
        self._runner: SessionRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # start/continue/stop decisions are serialized

    @property
    def active_session_id(self) -> str:
        return self._runner.id if self._runner is not None and not self._finished() else ""

    def _finished(self) -> bool:
        return self._task is None or self._task.done()

    async def start(
        self,
        *,
        session_id: str | None,
        name: str | None,
        settings: Mapping[str, Any],
        scope: str | None = None,
    ) -> Record:
        async with self._lock:
            self._ensure_idle()
            config = session_config(settings)
            config["model_id"] = await self._seed_model(settings.get("model_id"))
            session = await asyncio.to_thread(
                self.store.sessions.create,
                id=session_id or None,
                name=name or None,
                status="running",
                config=config,
                model_id=config["model_id"],
                rounds_completed=0,
                rounds_planned=int(config["rounds"]),
                reason="",
                scope=scope,
            )
            self._launch(session)
            return session

    async def continue_session(
        self, session_id: str, *, rounds: int | None, round_timeout: float | None
    ) -> Record:
        async with self._lock:
            self._ensure_idle()
            session = await asyncio.to_thread(self.store.sessions.get, session_id)
            if session["status"] not in TERMINAL:
                raise FailedPrecondition(
                    f"session {session_id} is {session['status']}; "
                    "only an ended session can continue"
                )
            config = dict(session["config"])
            if round_timeout is not None:
                config["round_timeout"] = round_timeout
            extra = int(rounds if rounds is not None else config["rounds"])
            config = session_config({k: v for k, v in config.items() if k != "model_id"}) | {
                "model_id": config["model_id"]
            }
            _require(extra >= 1, "rounds must be at least 1")
            session = await asyncio.to_thread(
                self.store.sessions.update,
                session_id,
                status="running",
                reason="",
                config=config,
                rounds_planned=int(session["rounds_completed"]) + extra,
            )
            self._launch(session)
            return session

    async def stop(self, session_id: str) -> Record:
        async with self._lock:
            runner = self._runner
            if runner is None or runner.id != session_id or self._finished():
                session = await asyncio.to_thread(self.store.sessions.get, session_id)
                raise FailedPrecondition(
                    f"session {session_id} is {session['status']}, not running"
                )
            runner.request_stop()
            assert self._task is not None
            await asyncio.shield(self._task)
            return await asyncio.to_thread(self.store.sessions.get, session_id)

    async def resume_interrupted(self) -> None:
        """After a restart: close the rounds that were in flight and resume the session."""
        running = await asyncio.to_thread(
            self.store.sessions.list, status="running", sort_order="asc"
        )
        for index, session in enumerate(running["result"]):
            await self._abort_in_flight_rounds(session["id"])
            if index == 0:
                log.info("resuming session %s after a controller restart", session["id"])
                self._launch(session)
            else:  # only one session may run; any other is a leftover of an older bug or crash
                await asyncio.to_thread(
                    self.store.sessions.update,
                    session["id"],
                    status="failed",
                    reason="found running beside another session at start-up",
                )

    async def _abort_in_flight_rounds(self, session_id: str) -> None:
        rounds = await asyncio.to_thread(
            self.store.rounds.list, session_id=session_id, status="running"
        )
        for record in rounds["result"]:
            await asyncio.to_thread(
                self.store.rounds.update,
                record["id"],
                status="aborted",
                reason="the controller restarted during this round; its updates were discarded "
                "and the session resumed from the last committed model",
            )

    async def shutdown(self) -> None:
        """Stop running without ending the session: a restart resumes it."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    def _ensure_idle(self) -> None:
        if not self._finished():
            raise FailedPrecondition(
                f"session {self.active_session_id} is running; stop it or wait for it to end"
            )

    async def _seed_model(self, model_id: str | None) -> str:
        if model_id:
            try:
                await asyncio.to_thread(self.store.models.get, model_id)
            except NotFound:
                raise NotFound(f"model {model_id!r} not found; upload it first") from None
            return model_id
        try:
            active = await asyncio.to_thread(self.store.models.get_active)
        except NotFound:
            raise FailedPrecondition(
                "no active model: upload a seed model and set it active before starting a session"
            ) from None
        return str(active["id"])

    def _launch(self, session: Record) -> None:
        self._runner = SessionRunner(self.network, session)
        self._task = asyncio.ensure_future(self._runner.run())
