"""One training round on one combiner: sample, dispatch, fold updates in, close.

A round closes at the first of: ``round_buffer_size`` accepted updates (all sampled clients
when -1), every sampled client having answered (update, failure or disconnect), the round
timeout, or a cancel from the controller. Once closed it accepts nothing more: a late update
gets FAILED_PRECONDITION and is never folded into a later round.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import struct_pb2

from fedgrpc.aggregators import WeightedMeanAccumulator
from fedgrpc.combiner.clients import ClientConnection
from fedgrpc.combiner.models import CachedModel
from fedgrpc.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from fedgrpc.model.serialization import load_model
from fedgrpc.offload import OFFLOAD_BYTES, off_loop_if_large
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.rpc.connect import SharedTask
from fedgrpc.transfer import ReceivedModel

log = logging.getLogger(__name__)


@dataclass
class ClientOutcome:
    """What became of one sampled client's task."""

    client_name: str
    sent_at: float
    status: str = "pending"
    num_examples: float = 0.0
    train_seconds: float = 0.0
    upload_bytes: int = 0
    finished_at: float = 0.0
    message: str = ""
    # As the client sent it: copied into the report as it is, not rebuilt from a dict.
    metadata: struct_pb2.Struct | None = None

    def to_report(self) -> network_pb2.ClientRoundReport:
        status = "timeout" if self.status in ("pending", "receiving") else self.status
        elapsed = (self.finished_at - self.sent_at) if self.finished_at else 0.0
        report = network_pb2.ClientRoundReport(
            client_name=self.client_name,
            status=status,
            num_examples=self.num_examples,
            train_seconds=self.train_seconds,
            upload_bytes=self.upload_bytes,
            round_trip_seconds=elapsed,
            message=self.message
            or ("no update before the round closed" if status == "timeout" else ""),
        )
        if self.metadata is not None:
            report.metadata.CopyFrom(self.metadata)
        return report


def sample_clients(
    clients: list[ClientConnection], requested: int, seed: int
) -> list[ClientConnection]:
    """A reproducible random sample of up to ``requested`` clients."""
    ordered = sorted(clients, key=lambda c: c.name)
    count = min(requested, len(ordered))
    return random.Random(seed).sample(ordered, count)


def fits_inline(size: int, client: ClientConnection) -> bool:
    """A model of ``size`` bytes travels inline on this client's stream."""
    return 0 < size <= client.inline_model_bytes


def update_weight(metadata: Mapping[str, Any]) -> float:
    """The update's weight: ``num_examples``, required, finite and positive."""
    value = metadata.get("num_examples")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument("update metadata must hold num_examples as a number > 0")
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"num_examples must be a finite number > 0, got {value}")
    return float(value)


class TrainingRound:
    """The combiner's part of one round."""

    def __init__(
        self,
        assignment: network_pb2.RoundAssignment,
        accumulator: WeightedMeanAccumulator,
        *,
        max_model_size: int,
    ) -> None:
        self.assignment = assignment
        self.id = assignment.round_id
        self._accumulator = accumulator
        self._max_model_size = max_model_size
        self._outcomes: dict[str, ClientOutcome] = {}  # by task id
        # Kept as counts, not recounted per update: recounting made a round of n clients
        # cost O(n^2) (seconds per round at 8,000 clients).
        self._accepted = 0
        self._unanswered = 0  # pending or receiving
        self._target = 0
        self._lock = asyncio.Lock()  # one fold at a time: the accumulator is not re-entrant
        self._done = asyncio.Event()
        self.closed = False
        self.close_reason = ""

    @property
    def task_ids(self) -> list[str]:
        return list(self._outcomes)

    def dispatch(self, clients: list[ClientConnection], model: CachedModel | None = None) -> int:
        """Send a train task to each sampled client, with ``model`` inline to those whose
        inline limit it fits; return how many were sent it by id only (they download it)."""
        buffer = self.assignment.round_buffer_size
        self._target = len(clients) if buffer <= 0 else min(buffer, len(clients))
        now = time.monotonic()
        by_id = 0
        shared: SharedTask | None = None
        for client in clients:
            task_id = uuid.uuid4().hex
            self._outcomes[task_id] = ClientOutcome(client_name=client.name, sent_at=now)
            self._unanswered += 1
            if model is not None and fits_inline(len(model.data), client):
                if shared is None:
                    shared = SharedTask(self._train_task(""), bytes(model.data), model.digest)
                client.send(shared.for_client(task_id))
            else:
                by_id += 1
                client.send(self._train_task(task_id))
        if not clients:
            self.close("no clients connected to this combiner")
        return by_id

    def _train_task(self, task_id: str) -> combiner_pb2.ServerMessage:
        a = self.assignment
        task = combiner_pb2.TrainTask(
            task_id=task_id,
            session_id=a.session_id,
            round_id=a.round_id,
            round_number=a.round_number,
            model_id=a.model_id,
            timeout=a.round_timeout,
        )
        task.settings.CopyFrom(a.client_settings)
        return combiner_pb2.ServerMessage(train=task)

    def client_of(self, task_id: str) -> str:
        return self._outcomes[task_id].client_name

    async def accept_update(self, task_id: str, update: ReceivedModel) -> None:
        """Verify and fold one uploaded update; raise a domain error if it cannot be used."""
        outcome = self._open_outcome(task_id)
        metadata = update.metadata  # parsed from the header on each read: read it once
        try:
            weight = update_weight(metadata)
            await self._fold(update.data, weight)
        except InvalidArgument as exc:
            self._finish(outcome, "rejected", message=str(exc))
            raise
        self._accepted_update(outcome, update, metadata, weight)

    def can_fold_now(self, size: int) -> bool:
        """Whether an update of ``size`` bytes may be folded by :meth:`accept_update_now`:
        it is small (folded on the event loop either way) and no fold is under way."""
        return size < OFFLOAD_BYTES and not self._lock.locked()

    def accept_update_now(self, task_id: str, update: ReceivedModel) -> None:
        """:meth:`accept_update` without awaiting, for when :meth:`can_fold_now` says so.

        An inline update then needs no task of its own: spawning one cost a task, two
        coroutines and an event-loop pass per update, and the pass delayed the last update of
        every round. Nothing here awaits, so no fold can interleave with it."""
        outcome = self._open_outcome(task_id)
        metadata = update.metadata
        try:
            weight = update_weight(metadata)
            self._parse_and_add([update.data], weight)
        except InvalidArgument as exc:
            self._finish(outcome, "rejected", message=str(exc))
            raise
        self._accepted_update(outcome, update, metadata, weight)

    def _accepted_update(
        self,
        outcome: ClientOutcome,
        update: ReceivedModel,
        metadata: Mapping[str, Any],
        weight: float,
    ) -> None:
        self._finish(
            outcome,
            "ok",
            num_examples=weight,
            train_seconds=_float(metadata.get("train_seconds")),
            upload_bytes=len(update.data),
            metadata=update.header.metadata,
        )

    async def _fold(self, data: bytes | memoryview, weight: float) -> None:
        """Parse the update and add it to the accumulator.

        A writeable buffer (the upload's, owned by this round) is parsed in place into views
        that the accumulator adopts or adds and drops: no copy of the update. Small updates
        are handled on the event loop, where a thread hop would cost more than the work.
        """
        async with self._lock:
            self._ensure_open()
            await off_loop_if_large(len(data), self._parse_and_add, [data], weight)

    def _parse_and_add(self, handed_over: list[bytes | memoryview], weight: float) -> None:
        # The payload comes in a list emptied here, so its last reference from this call ends
        # with this frame. Passed directly, the executor's work item would keep it alive a
        # moment after the awaiting coroutine resumed, and the next upload's buffer would be
        # filled while this one still held memory: two updates at once at the peak.
        arrays = load_model(handed_over.pop(), max_size=self._max_model_size, copy=False)
        self._accumulator.add(arrays, weight, consume=True)

    def task_failed(self, task_id: str, message: str, *, status: str = "failed") -> None:
        """The task ends without an update: ``failed`` (the client says so) or ``rejected``
        (its inline update could not be used)."""
        outcome = self._outcomes.get(task_id)
        if outcome is not None and outcome.status == "pending":
            self._finish(outcome, status, message=message)

    def client_gone(self, client_name: str) -> None:
        for outcome in self._outcomes.values():
            if outcome.client_name == client_name and outcome.status == "pending":
                self._finish(outcome, "disconnected", message="client disconnected mid-round")

    def check_open(self, task_id: str) -> None:
        """Refuse an upload early (from its header) when it cannot be used."""
        self._ensure_open()
        if self._outcomes[task_id].status != "pending":
            raise AlreadyExists(
                f"task {task_id} already answered ({self._outcomes[task_id].status})"
            )

    def _open_outcome(self, task_id: str) -> ClientOutcome:
        self.check_open(task_id)
        outcome = self._outcomes[task_id]
        outcome.status = "receiving"  # a duplicate upload of the same task is refused from now
        return outcome

    def _ensure_open(self) -> None:
        if self.closed:
            raise FailedPrecondition(
                f"round {self.id} closed before this update arrived ({self.close_reason}); "
                "the update was dropped"
            )

    def _finish(self, outcome: ClientOutcome, status: str, **fields: Any) -> None:
        if outcome.status in _UNANSWERED:
            self._unanswered -= 1
        outcome.status = status
        outcome.finished_at = time.monotonic()
        for name, value in fields.items():
            setattr(outcome, name, value)
        if status == "ok":
            self._accepted += 1
        if self._accepted >= self._target:
            self.close(f"buffer of {self._target} updates filled")
        elif self._unanswered == 0:
            self.close("every sampled client answered")

    @property
    def accepted(self) -> int:
        return self._accepted

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self._done.set()

    async def wait_closed(self) -> None:
        """Block until the round closes, or close it at its timeout."""
        try:
            await asyncio.wait_for(self._done.wait(), self.assignment.round_timeout)
        except TimeoutError:
            self.close(f"round timeout of {self.assignment.round_timeout:g}s reached")

    def pending_tasks(self) -> list[tuple[str, str]]:
        """(task id, client name) of tasks still unanswered."""
        return [(t, o.client_name) for t, o in self._outcomes.items() if o.status == "pending"]

    async def partial_mean(self) -> tuple[dict[str, np.ndarray] | None, float, int]:
        """The weighted mean of accepted updates, their total weight and count."""
        async with self._lock:  # waits for a fold that began before the close
            count, total_weight = self._accumulator.count, self._accumulator.total_weight
            if count == 0:
                return None, 0.0, 0
            # Unrounded, in the accumulation dtypes: merging rounded means would not be exact
            # FedAvg for integer, bool and float16 tensors.
            # The round is over: its sums become the mean in place (no second model in memory).
            size = sum(
                math.prod(spec.shape) * spec.accumulation_dtype.itemsize
                for spec in self._accumulator.specs.values()
            )
            mean = await off_loop_if_large(size, self._accumulator.take_partial_mean)
            return mean, total_weight, count

    def reports(self) -> list[network_pb2.ClientRoundReport]:
        return [o.to_report() for o in self._outcomes.values()]


_UNANSWERED = frozenset({"pending", "receiving"})


def _float(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
