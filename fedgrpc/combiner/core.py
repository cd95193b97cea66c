"""The combiner's state and behaviour, independent of gRPC: clients, rounds, validations.

Servicers and the controller link call into this; it reports back through ``report`` (the
link's outbox) and uploads partial aggregates through ``upload_partial``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from fedgrpc.aggregators import ArraySpec, get_aggregator
from fedgrpc.background import BackgroundTasks
from fedgrpc.combiner.analyses import analysis_report, route_of
from fedgrpc.combiner.clients import ClientConnection, ClientRegistry
from fedgrpc.combiner.models import CachedModel, ModelCache
from fedgrpc.combiner.rounds import TrainingRound, sample_clients
from fedgrpc.combiner.validation import ValidationPass
from fedgrpc.errors import (
    FailedPrecondition,
    FedgrpcError,
    PermissionDenied,
)
from fedgrpc.model.chunking import check_inline, check_inline_size, model_digest
from fedgrpc.model.serialization import dump_model_shared, model_specs
from fedgrpc.offload import off_loop_if_large
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.model.v1 import model_pb2
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.transfer import ReceivedModel, struct_to_dict

log = logging.getLogger(__name__)

ReportSink = Callable[[network_pb2.CombinerReport], None]
UploadPartial = Callable[
    [bytes | memoryview, network_pb2.RoundAssignment, float, int], Awaitable[str]
]
FetchModel = Callable[[str], Awaitable[CachedModel]]

_FROM_NODES = frozenset({"message", "ack", "analysis_update"})

# Task ids of closed rounds are remembered for a while so a late upload is told "the round
# closed" rather than "unknown task".
_CLOSED_TASK_MEMORY = 100_000


class CombinerCore:
    def __init__(
        self,
        *,
        name: str,
        max_clients: int,
        max_model_size: int,
        inline_model_bytes: int = 0,
        report: ReportSink,
        fetch_model: FetchModel,
        upload_partial: UploadPartial,
    ) -> None:
        self.name = name
        self.max_model_size = max_model_size
        # Models up to this size travel inline on the clients' streams (0: never).
        self.inline_model_bytes = inline_model_bytes
        # Global models and partial means up to this size travel inline on the controller
        # link (negotiated at registration; 0 until then).
        self.link_inline_bytes = 0
        self._report = report
        self._upload_partial = upload_partial
        self.models = ModelCache(fetch_model)
        self.clients = ClientRegistry(
            max_clients=max_clients,
            on_connect=self._client_connected,
            on_disconnect=self._client_disconnected,
        )
        self._tasks: dict[str, TrainingRound | ValidationPass] = {}
        self._rounds: dict[str, TrainingRound] = {}
        self._validations: set[ValidationPass] = set()
        self._closed_tasks: deque[str] = deque(maxlen=_CLOSED_TASK_MEMORY)
        self._closed_task_set: set[str] = set()
        self._background = BackgroundTasks("combiner")

    # --- clients --------------------------------------------------------------------------

    def _client_connected(self, client: ClientConnection) -> None:
        event = network_pb2.ClientEvent(
            kind=network_pb2.ClientEvent.KIND_CONNECTED,
            client=_connected(client),
        )
        self._report(network_pb2.CombinerReport(client_event=event))

    def _client_disconnected(self, client: ClientConnection) -> None:
        for round_ in self._rounds.values():
            round_.client_gone(client.name)
        for validation in self._validations:
            validation.client_gone(client.name)
        event = network_pb2.ClientEvent(
            kind=network_pb2.ClientEvent.KIND_DISCONNECTED,
            client=network_pb2.ConnectedClient(name=client.name, ip=client.ip),
        )
        self._report(network_pb2.CombinerReport(client_event=event))

    def connected_clients(self) -> list[network_pb2.ConnectedClient]:
        return [_connected(client) for client in self.clients.online()]

    def _owner_of(self, task_id: str) -> str | None:
        """The client a task was sent to, while its round or validation pass is open."""
        work = self._tasks.get(task_id)
        return work.client_of(task_id) if work is not None else None

    def handle_client_message(
        self, client: ClientConnection, message: combiner_pb2.ClientMessage
    ) -> None:
        kind = message.WhichOneof("kind")
        task_id = getattr(message, kind).task_id if kind in ("task_failed", "validation") else ""
        if task_id and self._owner_of(task_id) not in (None, client.name):
            log.warning(
                "client %s answered task %s of another client; ignored", client.name, task_id
            )
            return
        if kind == "task_failed":
            self._task_failed(client, message.task_failed)
        elif kind == "validation":
            work = self._tasks.get(message.validation.task_id)
            if isinstance(work, ValidationPass):
                work.result(message.validation.task_id, message.validation)
        elif kind == "update":
            self._inline_update(client, message.update)
        elif kind in _FROM_NODES:
            self._report(analysis_report(client.name, message))

    def route_to_client(self, command: network_pb2.ControllerCommand) -> None:
        """An analysis command for one client; dropped when it is not connected here (the
        controller sends messages again and starts its offline grace for the node)."""
        routed = route_of(command)
        if routed is None:
            return
        client = self.clients.get(routed[0])
        if client is not None:
            client.send(routed[1])

    def _task_failed(self, client: ClientConnection, failure: combiner_pb2.TaskFailed) -> None:
        work = self._tasks.get(failure.task_id)
        if work is None:
            return
        work.task_failed(failure.task_id, failure.message)
        session_id = work.assignment.session_id
        self.status(
            "task.failed",
            f"client {client.name} failed task {failure.task_id}: {failure.message}",
            level="WARNING",
            session_id=session_id,
            round_id=work.assignment.round_id,
            sender_name=client.name,
            sender_role="client",
        )

    # --- uploads --------------------------------------------------------------------------

    def check_upload(self, header: model_pb2.ModelHeader, uploader: str | None = None) -> None:
        """Refuse an update from its header alone when its task or round is not open, or
        when ``uploader`` (the token's subject, if any) is not the client the task went to.

        A refused update is recorded as a status event, so a late client is visible in the
        session's history rather than silently ignored.
        """
        owner = self._owner_of(header.task_id)
        if uploader is not None and owner is not None and owner != uploader:
            raise PermissionDenied(
                f"task {header.task_id} was sent to client '{owner}', not to '{uploader}'; "
                "a client uploads only its own updates"
            )
        try:
            self._round_for_task(header.task_id).check_open(header.task_id)
        except FedgrpcError as exc:
            self.status(
                "update.dropped",
                f"update for task {header.task_id or '(none)'} refused: {exc}",
                level="WARNING",
                session_id=header.session_id,
                round_id=header.round_id,
            )
            raise

    async def accept_update(self, update: ReceivedModel) -> None:
        task_id = update.header.task_id
        round_ = self._round_for_task(task_id)
        try:
            await round_.accept_update(task_id, update)
        except FedgrpcError as exc:
            self._update_refused(round_, task_id, exc)
            raise

    def _update_refused(self, round_: TrainingRound, task_id: str, exc: FedgrpcError) -> None:
        self._update_rejected(
            round_, f"update from {round_.client_of(task_id)} for round {round_.id} refused: {exc}"
        )

    def _update_rejected(self, round_: TrainingRound, text: str) -> None:
        self.status(
            "update.rejected",
            text,
            level="WARNING",
            session_id=round_.assignment.session_id,
            round_id=round_.id,
        )

    def _inline_update(self, client: ClientConnection, update: combiner_pb2.ModelUpdate) -> None:
        """An update sent on the client's stream: checked as an upload would be (the task must
        be this client's and open, the size within the limits, the digest right), then folded:
        right here when the round can fold it at once, else in a task of its own.

        There is no call to fail, so every refusal is recorded as a status event; one for the
        client's own open task also ends that task as ``rejected``, so the round goes on with
        the other clients instead of waiting for its timeout.
        """
        payload = update.model  # each read of a bytes field copies it: read it once
        header = model_pb2.ModelHeader(
            task_id=update.task_id,
            session_id=update.session_id,
            round_id=update.round_id,
            digest=update.digest,
            total_size=len(payload),
        )
        header.metadata.CopyFrom(update.metadata)
        try:
            self.check_upload(header, uploader=client.name)  # late/unknown: recorded there
        except PermissionDenied as exc:
            log.warning("client %s: inline update refused: %s", client.name, exc)
            self.status(
                "update.dropped",
                f"inline update from {client.name} refused: {exc}",
                level="WARNING",
                session_id=update.session_id,
                round_id=update.round_id,
                sender_name=client.name,
                sender_role="client",
            )
            return
        except FedgrpcError as exc:
            log.warning("client %s: inline update refused: %s", client.name, exc)
            return
        round_ = self._round_for_task(update.task_id)
        try:
            data = self._verified_inline(client, update.digest, payload)
        except FedgrpcError as exc:
            message = f"inline update refused: {exc.code.name}: {exc}"
            round_.task_failed(update.task_id, message, status="rejected")
            self._update_rejected(
                round_, f"update from {client.name} for round {round_.id}: {message}"
            )
            return
        received = ReceivedModel(header=header, data=data)
        if not round_.can_fold_now(len(data)):
            self._background.spawn(self._accept_inline(client, received))
            return
        try:
            round_.accept_update_now(update.task_id, received)
        except FedgrpcError as exc:
            self._update_refused(round_, update.task_id, exc)
            log.warning("client %s: inline update refused: %s", client.name, exc)

    async def _accept_inline(self, client: ClientConnection, update: ReceivedModel) -> None:
        try:
            await self.accept_update(update)
        except FedgrpcError as exc:  # recorded by accept_update
            log.warning("client %s: inline update refused: %s", client.name, exc)

    def _verified_inline(
        self, client: ClientConnection, claimed_digest: str, payload: bytes
    ) -> memoryview:
        """The inline update's bytes, checked: its size, and its digest when the client sent
        one (optional: one message is framed and checked by the transport like any other
        field; a digest guards models assembled from chunks or stored by it).

        Read-only: the accumulator copies the update it keeps as its sum and adds the others
        straight from their messages."""
        limit = min(client.inline_model_bytes, self.max_model_size)
        if claimed_digest:
            check_inline(payload, claimed_digest, limit=limit, what="inline update")
        else:
            check_inline_size(len(payload), limit=limit, what="inline update")
        return memoryview(payload)

    def _round_for_task(self, task_id: str) -> TrainingRound:
        work = self._tasks.get(task_id)
        if isinstance(work, TrainingRound):
            return work
        if task_id in self._closed_task_set:
            raise FailedPrecondition(
                f"task {task_id} belongs to a round that has closed; the update was dropped"
            )
        raise FailedPrecondition(f"task {task_id!r} is not an open train task on this combiner")

    # --- rounds ---------------------------------------------------------------------------

    def start_round(self, assignment: network_pb2.RoundAssignment) -> None:
        self._background.spawn(self._run_round(assignment))

    def start_validation(self, assignment: network_pb2.ValidationAssignment) -> None:
        self._background.spawn(self._run_validation(assignment))

    def cancel_round(self, round_id: str, reason: str) -> None:
        round_ = self._rounds.get(round_id)
        if round_ is not None:
            round_.close(f"cancelled by the controller: {reason}")

    def cancel_all(self, reason: str) -> None:
        for round_ in self._rounds.values():
            round_.close(reason)

    async def _run_round(self, assignment: network_pb2.RoundAssignment) -> None:
        # Filled in place: wrapping a finished result would copy its inline partial again.
        report = network_pb2.CombinerReport(
            round_result=network_pb2.RoundResult(
                round_id=assignment.round_id, session_id=assignment.session_id
            )
        )
        result = report.round_result
        round_: TrainingRound | None = None
        try:
            round_ = await self._open_round(assignment)
            await round_.wait_closed()
            self._cancel_pending(round_)
            mean, total_weight, count = await round_.partial_mean()
            if mean is not None:
                # The mean usually lives in the first update's buffer: shipped as it is.
                size = sum(array.nbytes for array in mean.values())
                data = await off_loop_if_large(size, dump_model_shared, mean)
                del mean
                if 0 < len(data) <= self.link_inline_bytes:  # on the link, no Upload call
                    result.partial, result.partial_digest = bytes(data), model_digest(data)
                else:
                    result.model_id = await self._upload_partial(
                        data, assignment, total_weight, count
                    )
            result.total_weight, result.num_updates = total_weight, count
            result.clients.extend(round_.reports())
        except FedgrpcError as exc:
            log.warning("round %s failed on combiner %s: %s", assignment.round_id, self.name, exc)
            result.error = str(exc)
        finally:
            if round_ is not None:
                self._forget_round(round_)
        self._report(report)

    async def _open_round(self, assignment: network_pb2.RoundAssignment) -> TrainingRound:
        model = assignment.model  # each read of a bytes field copies it: read it once
        if model:
            self.models.put(_inline_model(assignment, model, self.link_inline_bytes))
        cached = await self.models.get(assignment.model_id)
        reference = self._reference_specs(cached)
        aggregator = get_aggregator(
            assignment.aggregator, struct_to_dict(assignment.aggregator_kwargs)
        )
        round_ = TrainingRound(
            assignment, aggregator.new_accumulator(reference), max_model_size=self.max_model_size
        )
        self._rounds[round_.id] = round_
        sampled = sample_clients(
            self.clients.online(), assignment.requested_clients, assignment.sampling_seed
        )
        downloads = round_.dispatch(sampled, cached)
        if downloads:
            self.models.expect_downloads(assignment.model_id, downloads)
        for task_id in round_.task_ids:
            self._tasks[task_id] = round_
        return round_

    def _reference_specs(self, cached: CachedModel) -> dict[str, ArraySpec]:
        """Names, shapes and dtypes updates must match, read from the model's header only."""
        specs = model_specs(cached.data, max_size=self.max_model_size)
        return {name: ArraySpec(shape, dtype) for name, (shape, dtype) in specs.items()}

    def _cancel_pending(self, round_: TrainingRound) -> None:
        for task_id, client_name in round_.pending_tasks():
            client = self.clients.get(client_name)
            if client is not None:
                cancel = combiner_pb2.CancelTask(task_id=task_id, reason=round_.close_reason)
                client.send(combiner_pb2.ServerMessage(cancel=cancel))

    def _forget_round(self, round_: TrainingRound) -> None:
        self._rounds.pop(round_.id, None)
        for task_id in round_.task_ids:
            self._tasks.pop(task_id, None)
            if len(self._closed_tasks) == self._closed_tasks.maxlen:
                self._closed_task_set.discard(self._closed_tasks[0])
            self._closed_tasks.append(task_id)
            self._closed_task_set.add(task_id)

    async def _run_validation(self, assignment: network_pb2.ValidationAssignment) -> None:
        validation = ValidationPass(assignment, self._report)
        self._validations.add(validation)
        try:
            clients = self.clients.online()
            model = None
            if any(client.inline_model_bytes for client in clients):
                try:
                    model = await self.models.get(assignment.model_id)
                except FedgrpcError as exc:  # the clients download it (and report failures)
                    log.warning("validation model %s not cached: %s", assignment.model_id, exc)
            validation.dispatch(clients, model)
            for task_id in validation.task_ids:
                self._tasks[task_id] = validation
            await validation.run_to_end()
        finally:
            self._validations.discard(validation)
            for task_id in validation.task_ids:
                self._tasks.pop(task_id, None)

    # --- misc -----------------------------------------------------------------------------

    def status(self, event_type: str, message: str, *, level: str = "INFO", **fields: Any) -> None:
        fields.setdefault("sender_name", self.name)
        fields.setdefault("sender_role", "combiner")
        event = network_pb2.StatusEvent(
            event_type=event_type, log_level=level, message=message, **fields
        )
        self._report(network_pb2.CombinerReport(status=event))

    async def shutdown(self) -> None:
        self.cancel_all("combiner shutting down")
        self.clients.close_all("combiner shutting down")
        await self._background.cancel_all()
        self.models.clear()


def _connected(client: ClientConnection) -> network_pb2.ConnectedClient:
    return network_pb2.ConnectedClient(name=client.name, ip=client.ip, public_key=client.public_key)


def _inline_model(assignment: network_pb2.RoundAssignment, model: bytes, limit: int) -> CachedModel:
    """The global model the controller sent on the link (``model``, read from the
    assignment once), checked like a download."""
    what = f"inline model {assignment.model_id}"
    actual = check_inline(model, assignment.model_digest, limit=limit, what=what)
    return CachedModel(model_id=assignment.model_id, data=model, digest=actual)
