"""Runs one session's rounds: dispatch to combiners, wait (bounded), reduce, commit, validate.

Failure policy (documented in the README): a round fails when fewer than ``min_clients``
updates arrive by its timeout, or no combiner can take part. The global model then stays as
it was. With ``round_failure_policy="continue"`` (default) the session goes on, but fails after
``max_consecutive_failures`` failed rounds in a row (0 = never); with ``"stop"`` the first
failed round fails the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fedgrpc.controller.link_models import InlineModel, InlinePartial, take_inline_partials
from fedgrpc.controller.network import Network
from fedgrpc.controller.reduce import Partial, ReduceOutcome, reduce_round, split_requested
from fedgrpc.errors import FedgrpcError
from fedgrpc.modelstore import StoredModel
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.statestore import Record
from fedgrpc.transfer import dict_to_struct, struct_to_dict

log = logging.getLogger(__name__)

# Extra seconds the controller gives combiners beyond round_timeout to report, so a round
# that closes on time at the combiner is not lost to transfer time.
REPORT_GRACE_SECONDS = 30.0


class RoundFailedError(Exception):
    """The round ends as failed; the message says why."""


@dataclass
class RoundRecord:
    """The round's record, built up as it runs."""

    id: str
    number: int
    started: float = field(default_factory=time.monotonic)
    # What the combiners reported, turned into the record's ``combiners`` only when it is
    # written: building it is not on the way to the committed model.
    results: dict[str, network_pb2.RoundResult] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)
    rejected: dict[str, str] = field(default_factory=dict)  # combiner -> why, at reduce
    partial_ids: list[str] = field(default_factory=list)

    def combiners(self) -> list[dict[str, Any]]:
        """The record's per-combiner (and per-client) report."""
        reports = [_combiner_report(name, result) for name, result in self.results.items()]
        for entry in reports:
            if entry["name"] in self.rejected:
                entry.update(status="rejected", error=self.rejected[entry["name"]])
        return reports + [
            {
                "name": name,
                "status": "lost",
                "error": "combiner went offline or did not report in time",
            }
            for name in sorted(self.lost)
        ]


class SessionRunner:
    def __init__(self, network: Network, session: Record) -> None:
        self.network = network
        self.store = network.store
        self.session = session
        self.config: dict[str, Any] = session["config"]
        self.stop_requested = asyncio.Event()
        self._stop_watch: asyncio.Task[Any] | None = None
        self._round: RoundRecord | None = None
        self._inline_model = InlineModel(network)

    @property
    def id(self) -> str:
        return str(self.session["id"])

    async def _save(self, **fields: Any) -> None:
        self.session = await asyncio.to_thread(self.store.sessions.update, self.id, **fields)

    def request_stop(self) -> None:
        self.stop_requested.set()
        if self._round is not None:
            for link in self.network.registry.online():
                cancel = network_pb2.CancelRound(round_id=self._round.id, reason="session stopped")
                link.send(network_pb2.ControllerCommand(cancel_round=cancel))

    async def run(self) -> None:
        try:
            status, reason = await self._run_rounds()
        except asyncio.CancelledError:
            raise  # controller shutdown: the session stays "running" and resumes on restart
        except Exception as exc:
            log.exception("session %s failed unexpectedly", self.id)
            status, reason = "failed", f"internal error: {exc}"
        finally:
            if self._stop_watch is not None:
                self._stop_watch.cancel()
        await self._save(status=status, reason=reason)
        log.info("session %s %s%s", self.id, status, f": {reason}" if reason else "")

    async def _run_rounds(self) -> tuple[str, str]:
        failures_in_row = 0
        limit = int(self.config.get("max_consecutive_failures", 0))
        while int(self.session["rounds_completed"]) < int(self.session["rounds_planned"]):
            if self.stop_requested.is_set():
                return "stopped", "stopped by request"
            ok = await self._run_round()
            if self.stop_requested.is_set():
                return "stopped", "stopped by request"
            failures_in_row = 0 if ok else failures_in_row + 1
            if not ok and self.config.get("round_failure_policy") == "stop":
                return "failed", "a round failed and round_failure_policy is stop"
            if limit and failures_in_row >= limit:
                return "failed", f"{failures_in_row} rounds in a row failed"
        return "finished", ""

    def _create_round_record(self) -> Record:
        """The next round's record, numbered after the session's last one (blocking)."""
        return self.store.rounds.create(
            session_id=self.id,
            round_number=self.store.rounds.last_number(self.id) + 1,
            status="running",
            model_id=self.session["model_id"],
        )

    async def _run_round(self) -> bool:
        # Worker-thread hops are on every round's critical path (each ~0.25 ms of CPU and two
        # wake-ups): the blocking steps are grouped, two hops before dispatch became one.
        record = await asyncio.to_thread(self._create_round_record)
        self._round = RoundRecord(id=record["id"], number=int(record["round_number"]))
        try:
            partials = await self._train(self._round)
            model_id = await self._reduce_and_commit(self._round, partials)
        except RoundFailedError as exc:
            await self._finish_round(self._round, "failed", reason=str(exc))
            await self._save(rounds_completed=int(self.session["rounds_completed"]) + 1)
            return False
        except SessionStoppedError:
            await self._finish_round(
                self._round, "aborted", reason="session stopped during the round"
            )
            return True
        finally:
            await self._drop_partials(self._round)
        if self.config.get("validate", True):
            await self._validate(self._round, model_id)
        self._round = None
        return True

    async def _train(self, round_: RoundRecord) -> list[Partial]:
        """Dispatch the round and collect the combiners' partials."""
        timeout = float(self.config["round_timeout"])
        needed = int(self.config["min_clients"])
        if self.network.registry.clients_online() < needed:  # else no waiter tasks to spawn
            enough = asyncio.ensure_future(self.network.wait_for_clients(needed, timeout))
            try:
                await self._wait_or_stop(enough)
            finally:
                enough.cancel()  # a no-op once it finished
            if not enough.result():
                online = self.network.registry.clients_online()
                raise RoundFailedError(
                    f"only {online} client(s) connected within round_timeout; min_clients={needed}"
                )
        shares = split_requested(
            int(self.config["requested_clients"]),
            {link.name: len(link.clients) for link in self.network.registry.online()},
        )
        if not shares:
            raise RoundFailedError("no clients are connected to any combiner")
        inline = await self._inline_model.get(self.session["model_id"])
        collector = self.network.registry.expect("round", round_.id, set(shares))
        try:
            for name, share in shares.items():
                if not self._assign(round_, name, share, inline):
                    collector.combiner_lost(name)
            await self._wait_or_stop(collector.done, timeout + REPORT_GRACE_SECONDS)
            results: dict[str, network_pb2.RoundResult] = dict(collector.results)  # type: ignore[arg-type]
            lost = set(shares) - set(results)
        finally:
            self.network.registry.forget("round", round_.id)
        return self._collect(round_, results, lost)

    def _assign(
        self, round_: RoundRecord, combiner: str, share: int, inline: tuple[bytes, str] | None
    ) -> bool:
        c = self.config
        assignment = network_pb2.RoundAssignment(
            round_id=round_.id,
            session_id=self.id,
            round_number=round_.number,
            model_id=self.session["model_id"],
            aggregator=c["aggregator"],
            aggregator_kwargs=dict_to_struct(c.get("aggregator_kwargs")),
            client_settings=dict_to_struct(c.get("client_settings")),
            round_timeout=float(c["round_timeout"]),
            round_buffer_size=int(c["round_buffer_size"]),
            requested_clients=share,
            sampling_seed=(int(c.get("seed", 0)) * 1_000_003 + round_.number) & 0xFFFFFFFFFFFF,
        )
        link = self.network.registry.links.get(combiner)
        if link is None:
            return False
        command = network_pb2.ControllerCommand(round=assignment)
        if inline is not None and len(inline[0]) <= link.inline_model_bytes:
            # No download round trip. Set on the command: wrapping a message copies it whole.
            command.round.model, command.round.model_digest = inline
        link.send(command)
        return True

    async def _wait_or_stop(
        self, waiting: asyncio.Future[Any], timeout: float | None = None
    ) -> None:
        """Wait until ``waiting`` is done or ``timeout`` passes, unless a stop request comes
        first (then raise SessionStoppedError). ``waiting`` is left as it is."""
        if self._stop_watch is None:  # one for the session, not a task per wait
            self._stop_watch = asyncio.ensure_future(self.stop_requested.wait())
        await asyncio.wait(
            {waiting, self._stop_watch}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if self.stop_requested.is_set():
            raise SessionStoppedError

    def _collect(
        self, round_: RoundRecord, results: dict[str, network_pb2.RoundResult], lost: set[str]
    ) -> list[Partial]:
        partials: list[Partial] = []
        inline = take_inline_partials(self.network, results)
        for name, result in results.items():
            if name in inline or result.model_id:
                partials.append(self._partial(round_, name, result, inline.get(name)))
        round_.results, round_.lost = results, lost
        updates = sum(p.num_updates for p in partials)
        needed = int(self.config["min_clients"])
        if updates < needed:
            raise RoundFailedError(
                f"{updates} update(s) arrived; the session needs min_clients={needed}"
            )
        return partials

    def _partial(
        self,
        round_: RoundRecord,
        name: str,
        result: network_pb2.RoundResult,
        inline: InlinePartial | None,
    ) -> Partial:
        """A combiner's partial: inline (in memory) or stored under ``result.model_id``."""
        if inline is None:
            round_.partial_ids.append(result.model_id)  # deleted when the round ends
        return Partial(
            combiner=name,
            model_id="" if inline else result.model_id,
            total_weight=result.total_weight,
            num_updates=result.num_updates,
            digest=inline.digest if inline else self.network.partial_digests.get(result.model_id),
            data=inline.data if inline else None,
        )

    async def _reduce_and_commit(self, round_: RoundRecord, partials: list[Partial]) -> str:
        """Reduce the partials into the new model and commit it, in one worker-thread hop:
        each hop is two wake-ups on the critical path of every round."""
        model_id = uuid.uuid4().hex
        global_model = self._inline_model.held(self.session["model_id"])
        outcome, stored, self.session = await asyncio.to_thread(
            self._reduce_and_commit_blocking, model_id, round_, partials, global_model
        )
        self._inline_model.remember(model_id, outcome.model_bytes, stored.digest)
        log.info("session %s round %d success", self.id, round_.number)
        return model_id

    def _reduce_and_commit_blocking(
        self,
        model_id: str,
        round_: RoundRecord,
        partials: list[Partial],
        global_model: bytes | None,
    ) -> tuple[ReduceOutcome, StoredModel, Record]:
        outcome = self._reduce(round_, partials, global_model)
        stored, session = self._commit(model_id, round_, outcome)
        return outcome, stored, session

    def _reduce(
        self, round_: RoundRecord, partials: list[Partial], global_model: bytes | None
    ) -> ReduceOutcome:
        """The new model from the partials (blocking); RoundFailedError when unusable."""
        try:
            outcome = reduce_round(
                store=self.network.models,
                global_model_id=self.session["model_id"],
                partials=partials,
                aggregator=self.config["aggregator"],
                aggregator_kwargs=self.config.get("aggregator_kwargs") or {},
                state_id=self.session.get("aggregator_state_id"),
                max_model_size=self.network.config.max_model_size,
                global_model_bytes=global_model,
            )
        except FedgrpcError as exc:
            raise RoundFailedError(f"aggregation failed: {exc}") from exc
        round_.rejected = dict(outcome.rejected)
        if outcome.num_updates < int(self.config["min_clients"]):
            raise RoundFailedError(
                f"only {outcome.num_updates} usable update(s); min_clients not met"
            )
        return outcome

    def _commit(
        self, model_id: str, round_: RoundRecord, outcome: ReduceOutcome
    ) -> tuple[StoredModel, Record]:
        """The crash-safe order (blocking): the aggregator's state and the new model's bytes
        durable first; then, in one statestore transaction, the model's record, the active
        pointer and the session moved to it; then the round marked a success. A model kept
        in the statestore's own database is written in that same transaction: all or
        nothing, so records that fail leave no orphan model behind (and one commit is saved)."""
        models = self.network.models
        fields: dict[str, Any] = {
            "model_id": model_id,
            "rounds_completed": int(self.session["rounds_completed"]) + 1,
        }
        old_state = self.session.get("aggregator_state_id")
        if outcome.state_bytes is not None:
            fields["aggregator_state_id"] = f"state-{uuid.uuid4().hex}"
            models.put_bytes(fields["aggregator_state_id"], outcome.state_bytes)
        joined = models.writes_into_statestore(len(outcome.model_bytes))
        with self.store.transaction() if joined else contextlib.nullcontext():
            stored = self._store_model_bytes(model_id, outcome)
            session = self._record_model(model_id, round_, stored, fields)
        duration = time.monotonic() - round_.started  # the new model is committed
        if old_state and outcome.state_bytes is not None:
            models.delete(old_state)
        self.store.rounds.update(
            round_.id,
            status="success",
            combiners=round_.combiners(),
            duration_seconds=duration,
            committed_model_id=model_id,
            num_updates=outcome.num_updates,
            total_weight=outcome.total_weight,
        )
        return stored, session

    def _record_model(
        self, model_id: str, round_: RoundRecord, stored: StoredModel, fields: dict[str, Any]
    ) -> Record:
        """The model's record, the active pointer and the session's fields, in one statestore
        transaction (or as part of the one this thread has open); the updated session."""
        with self.store.transaction():
            created = self.store.models.create(
                id=model_id,
                parent_model=self.session["model_id"],
                session_id=self.id,
                name=f"{self.session.get('name') or self.id} round {round_.number}",
                round_number=round_.number,
                size=stored.size,
                digest=stored.digest,
                scope=self.session.get("scope"),
            )
            self.store.models.activate(created)
            return self.store.sessions.update(self.id, **fields)

    def _store_model_bytes(self, model_id: str, outcome: ReduceOutcome) -> StoredModel:
        """The new model's bytes, durable (blocking): a link to the partial when it is
        passed on as stored, else written."""
        models = self.network.models
        if outcome.source_model_id is not None:
            return models.copy(
                outcome.source_model_id, model_id, verified_digest=outcome.model_digest
            )
        return models.put_bytes(model_id, outcome.model_bytes, verified_digest=outcome.model_digest)

    async def _finish_round(self, round_: RoundRecord, status: str, **fields: Any) -> None:
        duration = time.monotonic() - round_.started
        await asyncio.to_thread(
            self.store.rounds.update,
            round_.id,
            status=status,
            combiners=round_.combiners(),
            duration_seconds=duration,
            **fields,
        )
        log.info(
            "session %s round %d %s %s", self.id, round_.number, status, fields.get("reason", "")
        )

    async def _drop_partials(self, round_: RoundRecord) -> None:
        for partial_id in round_.partial_ids:
            self.network.partial_digests.pop(partial_id, None)
        if self.config.get("delete_models", True) and round_.partial_ids:
            await asyncio.to_thread(self._delete_models, list(round_.partial_ids))

    def _delete_models(self, model_ids: list[str]) -> None:
        for model_id in model_ids:
            self.network.models.delete(model_id)

    async def _validate(self, round_: RoundRecord, model_id: str) -> None:
        links = [link for link in self.network.registry.online() if link.clients]
        if not links:
            return
        timeout = float(self.config["round_timeout"])
        collector = self.network.registry.expect(
            "validation", round_.id, {link.name for link in links}
        )
        try:
            assignment = network_pb2.ValidationAssignment(
                session_id=self.id, round_id=round_.id, model_id=model_id, timeout=timeout
            )
            for link in links:
                link.send(network_pb2.ControllerCommand(validation=assignment))
            await collector.wait(timeout + REPORT_GRACE_SECONDS)
        finally:
            self.network.registry.forget("validation", round_.id)
        await self.network.writer.flush()  # validations are visible once the round is over


class SessionStoppedError(Exception):
    """A stop request interrupted the round."""


def _combiner_report(name: str, result: network_pb2.RoundResult) -> dict[str, Any]:
    return {
        "name": name,
        "status": "failed" if result.error else "ok",
        "num_updates": result.num_updates,
        "total_weight": result.total_weight,
        "error": result.error,
        "clients": [
            {
                "client_name": c.client_name,
                "status": c.status,
                "num_examples": c.num_examples,
                "train_seconds": c.train_seconds,
                "upload_bytes": c.upload_bytes,
                "round_trip_seconds": c.round_trip_seconds,
                "message": c.message,
                "metadata": struct_to_dict(c.metadata),
            }
            for c in result.clients
        ],
    }
