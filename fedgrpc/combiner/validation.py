"""One validation pass on one combiner: every connected client validates a model."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable

from fedgrpc.combiner.clients import ClientConnection
from fedgrpc.combiner.models import CachedModel
from fedgrpc.combiner.rounds import fits_inline
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.rpc.connect import SharedTask

ReportSink = Callable[[network_pb2.CombinerReport], None]


class ValidationPass:
    """Sends validate tasks and forwards each client's metrics to the controller as they come."""

    def __init__(self, assignment: network_pb2.ValidationAssignment, report: ReportSink) -> None:
        self.assignment = assignment
        self._report = report
        self._pending: dict[str, str] = {}  # task id -> client name
        self._requested = 0
        self._received = 0
        self._done = asyncio.Event()

    @property
    def task_ids(self) -> list[str]:
        return list(self._pending)

    def dispatch(self, clients: list[ClientConnection], model: CachedModel | None = None) -> None:
        """Send a validate task to each client, ``model`` inline where it fits."""
        shared: SharedTask | None = None
        for client in clients:
            task_id = uuid.uuid4().hex
            self._pending[task_id] = client.name
            if model is not None and fits_inline(len(model.data), client):
                if shared is None:
                    shared = SharedTask(self._validate_task(""), bytes(model.data), model.digest)
                client.send(shared.for_client(task_id))
            else:
                client.send(self._validate_task(task_id))
        self._requested = len(clients)
        self._check_done()

    def _validate_task(self, task_id: str) -> combiner_pb2.ServerMessage:
        a = self.assignment
        task = combiner_pb2.ValidateTask(
            task_id=task_id,
            session_id=a.session_id,
            round_id=a.round_id,
            model_id=a.model_id,
            timeout=a.timeout,
        )
        return combiner_pb2.ServerMessage(validate=task)

    def client_of(self, task_id: str) -> str | None:
        """The client a still-pending validate task went to."""
        return self._pending.get(task_id)

    def result(self, task_id: str, message: combiner_pb2.ValidationResult) -> None:
        client_name = self._pending.pop(task_id, None)
        if client_name is None:
            return
        self._received += 1
        a = self.assignment
        report = network_pb2.ValidationReport(
            model_id=a.model_id,
            session_id=a.session_id,
            round_id=a.round_id,
            client_name=client_name,
            correlation_id=task_id,
        )
        report.metrics.CopyFrom(message.metrics)
        self._report(network_pb2.CombinerReport(validation=report))
        self._check_done()

    def task_failed(self, task_id: str, message: str) -> None:
        if self._pending.pop(task_id, None) is not None:
            self._check_done()

    def client_gone(self, client_name: str) -> None:
        for task_id, name in list(self._pending.items()):
            if name == client_name:
                del self._pending[task_id]
        self._check_done()

    def _check_done(self) -> None:
        if not self._pending:
            self._done.set()

    async def run_to_end(self) -> None:
        """Wait for every answer or the timeout, then tell the controller the pass is over."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), self.assignment.timeout)
        done = network_pb2.ValidationDone(
            round_id=self.assignment.round_id, requested=self._requested, received=self._received
        )
        self._report(network_pb2.CombinerReport(validation_done=done))
