"""Receive buffers: the last large one is reused once nothing references it, never before."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest

from fedgrpc.model.buffers import MAP_BYTES, ReceiveBuffers
from fedgrpc.model.chunking import BufferAssembler, iter_chunks, model_digest

SIZE = 2 * MAP_BYTES + 3


def test_a_buffer_nothing_references_is_handed_out_again() -> None:
    buffers = ReceiveBuffers()
    first = buffers.take(SIZE)
    address = id(first)
    del first
    gc.collect()
    assert id(buffers.take(SIZE)) == address


@pytest.mark.parametrize("holder", ["memoryview", "slice", "numpy", "buffer"])
def test_a_buffer_still_referenced_is_never_handed_out(holder: str) -> None:
    buffers = ReceiveBuffers()
    first = buffers.take(SIZE)
    view = memoryview(first)
    kept: Any = {
        "memoryview": view,
        "slice": view[100:200],
        "numpy": np.frombuffer(view, dtype=np.uint8)[5:9],
        "buffer": first,
    }[holder]
    del view
    if holder != "buffer":
        del first
    second = buffers.take(SIZE)
    assert second is not kept
    memoryview(second)[:] = b"\xff" * SIZE  # never visible through what is kept
    assert not bytes(memoryview(kept)[:4]).strip(b"\x00")


def test_other_sizes_and_small_buffers_are_fresh() -> None:
    buffers = ReceiveBuffers()
    first = buffers.take(SIZE)
    first_id = id(first)
    del first
    assert id(buffers.take(SIZE + 1)) != first_id
    small = buffers.take(MAP_BYTES - 1)
    assert isinstance(small, bytearray)
    assert not any(small)


def test_consecutive_receptions_reuse_one_buffer_and_return_each_payload() -> None:
    rng = np.random.default_rng(0)
    payloads = [rng.bytes(SIZE) for _ in range(3)]
    addresses = set()
    for payload in payloads:
        assembler = BufferAssembler(
            expected_size=SIZE, expected_digest=model_digest(payload), max_size=None
        )
        for chunk in iter_chunks(payload, MAP_BYTES // 3):
            assembler.add(chunk)
        received = assembler.finish()
        assert bytes(received) == payload
        addresses.add(np.frombuffer(received, dtype=np.uint8).ctypes.data)
        del assembler, received
    assert len(addresses) == 1
