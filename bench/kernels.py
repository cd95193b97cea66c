"""Kernel benchmarks: the FedAvg fold against numpy, model transfer against a raw socket."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from bench.kernel_server import receive_exactly
from bench.procs import Child, spawn, stop_all, this_python
from bench.results import KernelResult
from fedgrpc.aggregators import WeightedMeanAccumulator
from fedgrpc.allocator import tune_allocator
from fedgrpc.proto.model.v1 import model_pb2
from fedgrpc.rpc.channel import open_channel
from fedgrpc.transfer import ModelTransferStub, download_model, upload_model

MAX_MODEL = 2048 * 1024 * 1024


def best_times(actions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` calls of each action, after one warm-up call each.

    The actions take turns, so a burst of load from elsewhere on a shared machine hits the
    kernel and its limit alike, and the minimum discards the bursts.
    """
    for action in actions.values():
        action()
    best = dict.fromkeys(actions, float("inf"))
    for _ in range(repeats):
        for name, action in actions.items():
            started = time.perf_counter()
            action()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


# --- FedAvg fold ---------------------------------------------------------------------------


def fedavg_kernels(size_bytes: int, repeats: int) -> list[KernelResult]:
    """``WeightedMeanAccumulator.add`` of one float32 update vs ``np.add(total, x, out=total)``.

    Updates weighted like the first one (the workloads' case: every client has 100 examples)
    and weighted differently (90 examples), handed over (``consume=True``, as the combiner
    does) or not.
    """
    params = size_bytes // 4
    rng = np.random.default_rng(0)
    update = rng.standard_normal(params, dtype=np.float32)
    total = rng.standard_normal(params, dtype=np.float32)
    cases = {
        f"fedavg add, {label} weights, consume={consume}": _accumulator_add(
            total, update, weight, consume=consume
        )
        for label, weight, consume in (
            ("equal", 100.0, True),
            ("unequal", 90.0, True),
            ("equal", 100.0, False),
        )
    }
    limit = "numpy in-place add"
    best = best_times({limit: lambda: np.add(total, update, out=total), **cases}, repeats)
    return [KernelResult(name, update.nbytes, best[name], limit, best[limit]) for name in cases]


def _accumulator_add(
    total: npt.NDArray[np.float32],
    update: npt.NDArray[np.float32],
    weight: float,
    *,
    consume: bool,
) -> Callable[[], None]:
    accumulator = WeightedMeanAccumulator({"w": total})
    accumulator.add({"w": total}, 100.0)

    def add() -> None:
        accumulator.add({"w": update}, weight, consume=consume)

    return add


# --- transfer ------------------------------------------------------------------------------


def _start_server(kind: str, size: int, log_dir: Path) -> tuple[Child, int]:
    child = spawn(
        f"kernel-{kind}-server",
        this_python(),
        "bench.kernel_server",
        [kind, "--size", str(size)],
        log_dir=log_dir,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_follow_log, args=(child, lines), daemon=True).start()
    try:
        port = int(json.loads(lines.get(timeout=60))["port"])
    except queue.Empty:
        stop_all([child])
        raise TimeoutError(f"{kind} kernel server did not start: {child.log_tail()}") from None
    return child, port


def _follow_log(child: Child, lines: queue.Queue[str]) -> None:
    while child.alive():
        for line in child.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"ready"' in line:
                lines.put(line)
                return
        time.sleep(0.05)


def socket_upload(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(b"u")
        connection.sendall(payload)
        if connection.recv(1) != b"k":
            raise ConnectionError("socket server did not acknowledge the upload")


def socket_download(port: int, buffer: bytearray) -> None:
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(b"d")
        receive_exactly(connection, memoryview(buffer))


async def _grpc_actions(
    port: int, payload: bytes
) -> tuple[grpc.aio.Channel, dict[str, Callable[[], Coroutine[Any, Any, None]]]]:
    channel = open_channel(f"127.0.0.1:{port}", max_message_size=16 * 1024 * 1024)
    stub = ModelTransferStub(channel)
    header = model_pb2.ModelHeader(model_id="upload")

    async def upload() -> None:
        response = await upload_model(stub, payload, header=header)
        if response.size != len(payload):
            raise ValueError("the server received a different size")

    async def download() -> None:
        # Into one buffer, as clients receive the global model.
        received = await download_model(stub, "model", max_size=MAX_MODEL, mutable=True)
        if len(received.data) != len(payload):
            raise ValueError("downloaded a different size")

    return channel, {"upload": upload, "download": download}


def _transfer_times(
    socket_port: int, grpc_port: int, payload: bytes, repeats: int
) -> dict[str, float]:
    """Best seconds of each transfer; raw socket and ModelService take turns."""
    buffer = bytearray(len(payload))
    with asyncio.Runner() as runner:
        channel, calls = runner.run(_grpc_actions(grpc_port, payload))
        try:
            return best_times(
                {
                    "raw upload": lambda: socket_upload(socket_port, payload),
                    "upload": lambda: runner.run(calls["upload"]()),
                    "raw download": lambda: socket_download(socket_port, buffer),
                    "download": lambda: runner.run(calls["download"]()),
                },
                repeats,
            )
        finally:
            runner.run(channel.close())


def transfer_kernels(size_bytes: int, repeats: int, log_dir: Path) -> list[KernelResult]:
    """ModelService upload and download through a real server vs a plain TCP socket.

    Both ends run as fedgrpc's daemons and clients do, with glibc's allocator tuned
    (:func:`fedgrpc.allocator.tune_allocator`): this process is the uploading and downloading
    client, the server process mounts the combiner's transfer code.
    """
    tune_allocator()
    payload = np.random.default_rng(1).bytes(size_bytes)
    children: list[Child] = []
    try:
        socket_server, socket_port = _start_server("socket", size_bytes, log_dir)
        children.append(socket_server)
        grpc_server, grpc_port = _start_server("grpc", size_bytes, log_dir)
        children.append(grpc_server)
        best = _transfer_times(socket_port, grpc_port, payload, repeats)
    finally:
        stop_all(children)
    limit = "raw TCP socket"
    return [
        KernelResult(f"ModelService {kind}", size_bytes, best[kind], limit, best[f"raw {kind}"])
        for kind in ("upload", "download")
    ]
