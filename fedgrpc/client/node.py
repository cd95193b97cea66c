"""A client (a node at a data site): connects through a combiner and runs the user's code.

User functions run one task at a time per client: plain functions in a worker thread, so
heartbeats keep flowing during long training and many clients can share one process and event
loop; ``async def`` functions on the event loop itself, with no thread hop (they must await,
not block, as any coroutine must). A ``train`` that raises is reported to the combiner as a
failed task; the client stays connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from fedgrpc import eventloop
from fedgrpc._version import __version__
from fedgrpc.allocator import tune_allocator
from fedgrpc.backoff import Backoff
from fedgrpc.client.entry import TrainFn, ValidateFn
from fedgrpc.client.host import AnalysisHost
from fedgrpc.config import ClientConfig
from fedgrpc.errors import (
    FedgrpcError,
    InvalidArgument,
    PermissionDenied,
    TlsHandshakeFailed,
    Unauthenticated,
    from_rpc_error,
)
from fedgrpc.model.chunking import check_inline_size
from fedgrpc.model.serialization import dump_model, dump_model_shared, load_model
from fedgrpc.offload import OFFLOAD_BYTES, off_loop_if_large
from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.model.v1 import model_pb2, model_pb2_grpc
from fedgrpc.proto.network.v1 import network_pb2, network_pb2_grpc
from fedgrpc.rpc.channel import call, open_channel
from fedgrpc.rpc.connect import ClientOutgoing, encode_update, open_connect
from fedgrpc.security.tls import channel_credentials_for
from fedgrpc.transfer import (
    ModelTransferStub,
    dict_to_struct,
    download_model,
    struct_to_dict,
    upload_model,
)

log = logging.getLogger(__name__)


# Errors no amount of retrying fixes: the client gives up and says why.
FATAL_ERRORS = (Unauthenticated, PermissionDenied, TlsHandshakeFailed)
ANALYSIS_KINDS = ("message", "receipt", "start_analysis", "stop_analysis")


# Only while a cancelled plain call still runs in its thread does an async one wait this long.
_USER_LOCK_POLL_SECONDS = 0.01


def _is_async(function: Any) -> bool:
    """An ``async def`` function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        type(function).__call__
    )


def as_user_model(arrays: dict[str, Any]) -> Any:
    """FEDn-style models (names "0".."n-1") are handed to user code as a list."""
    if arrays and set(arrays) == {str(i) for i in range(len(arrays))}:
        return [arrays[str(i)] for i in range(len(arrays))]
    return arrays


class Client:
    """``Client(controller=..., train=fn, validate=fn, name=...).run()``."""

    def __init__(
        self,
        *,
        controller: str | None = None,
        train: TrainFn | None = None,
        validate: ValidateFn | None = None,
        name: str | None = None,
        config: ClientConfig | None = None,
        token: str | None = None,
    ) -> None:
        base = config or ClientConfig()
        overrides = {"controller": controller, "name": name, "token": token}
        self.config = ClientConfig(
            **{**base.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
        )
        self.name = self.config.name or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._train = train
        self._validate = validate
        self._backoff = Backoff(
            base=self.config.reconnect_base_delay, cap=self.config.reconnect_max_delay
        )
        # User code runs one call at a time per client, guarded inside the worker thread: a
        # cancelled asyncio task cannot stop a running thread, so an asyncio lock would let a
        # second call start while the first is still running.
        self._user_code_lock = threading.Lock()
        self._stopping = asyncio.Event()
        self.combiner_name = ""
        self.connected = asyncio.Event()
        # This client's heartbeat interval and the combiner silence it tolerates, in seconds,
        # on its current stream (the combiner's pace).
        self.heartbeat_interval = self.config.heartbeat_interval
        self.heartbeat_timeout = 4 * self.config.heartbeat_interval
        self._running: dict[str, asyncio.Task[None]] = {}
        # The largest update sent inline on the stream (the combiner's Welcome says; 0: none).
        self._inline_limit = 0
        # Analyses (FLAME): keys, inboxes, analysis processes and the node-local service.
        self.analyses = AnalysisHost(self.config, self.name)

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> None:
        """Run until stopped (Ctrl-C) or a fatal error; this process's allocator is tuned
        for model-sized buffers first (:func:`fedgrpc.allocator.tune_allocator`)."""
        tune_allocator()
        eventloop.run(self.run_async())

    async def run_async(self) -> None:
        try:
            await self._run_connections()
        finally:
            await self.analyses.close()

    async def _run_connections(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                address = await self._assign()
                await self._serve(address)
            except FATAL_ERRORS:
                raise
            except FedgrpcError as exc:
                log.warning("client %s: %s", self.name, exc)
            self.connected.clear()
            if self._stopping.is_set():
                break
            if time.monotonic() - started > 30:
                attempt = 0
            delay = self._backoff.delay(attempt)
            attempt += 1
            log.info("client %s reconnecting in %.1fs", self.name, delay)
            await self._sleep_unless_stopped(delay)

    def stop(self) -> None:
        self._stopping.set()

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _assign(self) -> str:
        config = self.config
        channel = open_channel(
            config.controller,
            max_message_size=config.max_message_size,
            credentials=channel_credentials_for(config),
            token=config.token,
        )
        try:
            stub = network_pb2_grpc.NetworkServiceStub(channel)
            request = network_pb2.AssignCombinerRequest(
                client_name=self.name, preferred_combiner=config.preferred_combiner or ""
            )
            response = await call(stub.AssignCombiner, request, timeout=10)
        finally:
            await channel.close()
        self.combiner_name = str(response.combiner_name)
        return str(response.address)

    # --- one connection -------------------------------------------------------------------

    async def _serve(self, address: str) -> None:
        channel = open_channel(
            address,
            max_message_size=self.config.max_message_size,
            credentials=channel_credentials_for(self.config),
            token=self.config.token,
        )
        outbox: asyncio.Queue[ClientOutgoing] = asyncio.Queue()
        models = ModelTransferStub(channel)
        stream = open_connect(channel, self._outgoing(outbox))
        stopper = asyncio.ensure_future(self._cancel_on_stop(stream))
        try:
            async for message in stream:
                self._dispatch(message, outbox, models, stream)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        except asyncio.CancelledError:
            if not self._stopping.is_set() and not stream.cancelled():
                raise
        finally:
            stopper.cancel()
            for task in self._running.values():
                task.cancel()
            self._running.clear()
            self.analyses.disconnected()
            stream.cancel()
            await channel.close()

    async def _cancel_on_stop(self, stream: grpc.aio.StreamStreamCall) -> None:
        await self._stopping.wait()
        stream.cancel()

    async def _outgoing(
        self, outbox: asyncio.Queue[ClientOutgoing]
    ) -> AsyncIterator[ClientOutgoing]:
        hello = combiner_pb2.ClientHello(
            name=self.name,
            version=__version__,
            tags=self.config.tags,
            public_key=self.analyses.public_key,
            inline_model_bytes=self.config.inline_model_bytes,
        )
        yield combiner_pb2.ClientMessage(hello=hello)
        while True:
            yield await outbox.get()

    def _dispatch(
        self,
        message: combiner_pb2.ServerMessage,
        outbox: asyncio.Queue[ClientOutgoing],
        models: model_pb2_grpc.ModelServiceStub,
        stream: grpc.aio.StreamStreamCall,
    ) -> None:
        kind = message.WhichOneof("kind")
        self._last_heard = time.monotonic()
        if kind == "welcome":
            self._inline_limit = min(
                message.welcome.inline_model_bytes, self.config.inline_model_bytes
            )
            self._start_heartbeats(message.welcome, outbox, stream)
            self.analyses.connected(outbox)
            self.connected.set()
            log.info("client %s connected to %s", self.name, message.welcome.combiner_name)
        elif kind == "train":
            self._start(message.train.task_id, self._run_train(message.train, outbox, models))
        elif kind == "validate":
            self._start(
                message.validate.task_id, self._run_validate(message.validate, outbox, models)
            )
        elif kind == "heartbeat":
            if message.heartbeat.interval > 0 and message.heartbeat.timeout > 0:
                self._set_pace(message.heartbeat.interval, message.heartbeat.timeout)
        elif kind in ANALYSIS_KINDS:
            self.analyses.handle(message)
        elif kind == "cancel":
            task = self._running.pop(message.cancel.task_id, None)
            if task is not None:
                task.cancel()

    def _start_heartbeats(
        self,
        welcome: combiner_pb2.Welcome,
        outbox: asyncio.Queue[ClientOutgoing],
        stream: grpc.aio.StreamStreamCall,
    ) -> None:
        # The combiner sets the pace (it stretches it when it has many clients, and may
        # change it on any heartbeat); our own setting applies only to a combiner that
        # announces none.
        interval = welcome.heartbeat_interval or self.config.heartbeat_interval
        self._set_pace(interval, welcome.heartbeat_timeout or 4 * interval)
        self._start("heartbeat", self._heartbeat(outbox, stream))

    def _set_pace(self, interval: float, timeout: float) -> None:
        self.heartbeat_interval, self.heartbeat_timeout = interval, timeout

    async def _heartbeat(
        self, outbox: asyncio.Queue[ClientOutgoing], stream: grpc.aio.StreamStreamCall
    ) -> None:
        beat = combiner_pb2.ClientMessage(heartbeat=combiner_pb2.Heartbeat())
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if time.monotonic() - self._last_heard > self.heartbeat_timeout:
                log.warning("combiner silent for %.0fs; reconnecting", self.heartbeat_timeout)
                stream.cancel()
                return
            outbox.put_nowait(beat)

    def _start(self, key: str, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._running[key] = task
        task.add_done_callback(
            lambda _: self._running.pop(key, None) if self._running.get(key) is task else None
        )

    # --- tasks ----------------------------------------------------------------------------

    async def _call_user(self, function: Any, *args: Any) -> Any:
        if _is_async(function):
            return await self._call_async_user(function, *args)

        def locked() -> Any:
            with self._user_code_lock:
                return function(*args)

        return await asyncio.to_thread(locked)

    async def _call_async_user(self, function: Any, *args: Any) -> Any:
        """An ``async def`` user function on the loop: a worker-thread hop costs 0.15-0.7 ms
        per call on a busy 2-core host, most of a tiny task. It takes the same lock as the
        threads, so a plain call still running in its thread (its task cancelled) is waited
        for; the lock is polled rather than waited on in a thread, which a cancellation
        could leave holding it."""
        while not self._user_code_lock.acquire(blocking=False):  # noqa: ASYNC110 - a thread's lock
            await asyncio.sleep(_USER_LOCK_POLL_SECONDS)
        try:
            return await function(*args)
        finally:
            self._user_code_lock.release()

    async def _fetch(
        self,
        models: model_pb2_grpc.ModelServiceStub,
        task: combiner_pb2.TrainTask | combiner_pb2.ValidateTask,
    ) -> Any:
        payload = task.model  # each read of a bytes field copies it: read it once
        if payload:  # sent inline with the task
            data: bytes | bytearray | memoryview = self._inline_buffer(task, payload)
        else:
            # Received into one buffer the arrays then view: no join, no copy of the model.
            received = await download_model(
                models, task.model_id, max_size=self.config.max_model_size, mutable=True
            )
            data = received.data
        arrays = await off_loop_if_large(
            len(data),
            load_model,
            data,
            max_size=self.config.max_model_size,
            copy=False,
        )
        return as_user_model(arrays)

    def _inline_buffer(
        self, task: combiner_pb2.TrainTask | combiner_pb2.ValidateTask, payload: bytes
    ) -> bytearray:
        """A task's inline model (``payload``), size checked, in a buffer the arrays may view.

        Not hashed: one gRPC message arrives whole or not at all (the reason inline updates
        carry no digest either), and the combiner checked the model's digest when it got it.
        A model that is not valid safetensors still fails to load."""
        what = f"inline model {task.model_id}"
        check_inline_size(len(payload), limit=self.config.max_model_size, what=what)
        return bytearray(payload)

    async def _run_train(
        self,
        task: combiner_pb2.TrainTask,
        outbox: asyncio.Queue[ClientOutgoing],
        models: model_pb2_grpc.ModelServiceStub,
    ) -> None:
        if self._train is None:
            return _fail(outbox, task.task_id, "this client has no train function")
        try:
            model = await self._fetch(models, task)
            started = time.monotonic()
            result = await self._call_user(self._train, model, struct_to_dict(task.settings))
            new_model, metadata = _train_output(result)
            metadata = {**metadata, "train_seconds": time.monotonic() - started}
            # A large model trained in place still lies in the buffer it was received into,
            # under its header: that buffer is the update, with no model-sized copy (100 MB:
            # 112-131 ms). A small one is copied: quicker than checking its layout (4 kB: 3.9
            # against 6.7 us).
            size = _model_nbytes(new_model)
            dump = dump_model_shared if size >= OFFLOAD_BYTES else dump_model
            data = await off_loop_if_large(size, dump, new_model)
            if 0 < len(data) <= self._inline_limit:  # one stream message, no Upload call
                # No digest: the transport checks one message whole (ModelUpdate.digest).
                update = combiner_pb2.ModelUpdate(
                    task_id=task.task_id,
                    session_id=task.session_id,
                    round_id=task.round_id,
                    metadata=dict_to_struct(metadata),
                )
                outbox.put_nowait(encode_update(update, data))
                return
            header = model_pb2.ModelHeader(
                task_id=task.task_id,
                session_id=task.session_id,
                round_id=task.round_id,
                metadata=dict_to_struct(metadata),
            )
            await upload_model(models, data, header=header, chunk_size=self.config.chunk_size)
        except asyncio.CancelledError:
            raise
        except FedgrpcError as exc:
            log.warning("client %s: train task %s: %s", self.name, task.task_id, exc)
            _fail(outbox, task.task_id, str(exc))
        except Exception as exc:  # the user's code failed: report it and stay connected
            log.exception("client %s: train function raised", self.name)
            _fail(outbox, task.task_id, f"train raised {type(exc).__name__}: {exc}")

    async def _run_validate(
        self,
        task: combiner_pb2.ValidateTask,
        outbox: asyncio.Queue[ClientOutgoing],
        models: model_pb2_grpc.ModelServiceStub,
    ) -> None:
        if self._validate is None:
            return _fail(outbox, task.task_id, "this client has no validate function")
        try:
            model = await self._fetch(models, task)
            metrics = await self._call_user(self._validate, model)
            if not isinstance(metrics, Mapping):
                raise InvalidArgument(
                    f"validate must return a dict of metrics, got {type(metrics).__name__}"
                )
            result = combiner_pb2.ValidationResult(
                task_id=task.task_id, model_id=task.model_id, metrics=dict_to_struct(metrics)
            )
            outbox.put_nowait(combiner_pb2.ClientMessage(validation=result))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("client %s: validate failed: %s", self.name, exc)
            _fail(outbox, task.task_id, f"validate raised {type(exc).__name__}: {exc}")


def _model_nbytes(model: Any) -> int:
    """The bytes of a model's arrays; "large" for anything unexpected (dump_model judges it)."""
    arrays = model.values() if isinstance(model, Mapping) else model
    if not isinstance(arrays, (list, tuple)) and not isinstance(model, Mapping):
        return OFFLOAD_BYTES
    return sum(int(getattr(array, "nbytes", OFFLOAD_BYTES)) for array in arrays)


def _train_output(result: Any) -> tuple[Any, dict[str, Any]]:
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping)):
        raise InvalidArgument("train must return (model, metadata) with metadata a dict")
    model, metadata = result
    if "num_examples" not in metadata:
        raise InvalidArgument("train's metadata must include num_examples (the update's weight)")
    return model, dict(metadata)


def _fail(outbox: asyncio.Queue[ClientOutgoing], task_id: str, message: str) -> None:
    failure = combiner_pb2.TaskFailed(task_id=task_id, message=message[:4000])
    outbox.put_nowait(combiner_pb2.ClientMessage(task_failed=failure))
