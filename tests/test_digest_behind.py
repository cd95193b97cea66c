"""DigestBehind hashes in order on one worker thread, reports failures and never leaks it."""

from __future__ import annotations

import functools
import hashlib
import os
import threading

import pytest

from fedgrpc.model.digest import DigestBehind
from tests.integration.conftest import eventually


def _digest_threads() -> int:
    return sum(thread.name == "fedgrpc-digest" for thread in threading.enumerate())


async def _until_no_digest_threads() -> None:
    await eventually(lambda: _digest_threads() == 0, what="the digest worker to exit")


@pytest.mark.parametrize("sizes", [[10, 20, 300_000, 5, 400_000], [1, 2, 3]])
async def test_chunks_are_hashed_in_order(sizes: list[int]) -> None:
    chunks = [os.urandom(size) for size in sizes]
    hasher = hashlib.sha256()
    behind = DigestBehind()
    for chunk in chunks:
        behind.then(functools.partial(hasher.update, chunk), len(chunk))
    await behind.done()
    assert hasher.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
    await _until_no_digest_threads()


async def test_a_small_stream_never_starts_a_thread() -> None:
    behind = DigestBehind()
    behind.offload = False
    seen: list[int] = []
    behind.then(lambda: seen.append(1), 10_000_000)
    assert seen == [1]
    assert _digest_threads() == 0
    await behind.done()


async def test_a_failing_digest_is_raised_by_done() -> None:
    behind = DigestBehind()

    def fail() -> None:
        raise ValueError("disk on fire")

    behind.then(fail, 1 << 20)
    with pytest.raises(ValueError, match="disk on fire"):
        await behind.done()
    await _until_no_digest_threads()


def _wait_for(event: threading.Event) -> None:
    event.wait()


async def test_an_abandoned_stream_lets_its_worker_exit() -> None:
    behind = DigestBehind()
    release = threading.Event()
    behind.then(functools.partial(_wait_for, release), 1 << 20)
    behind.then(lambda: None, 1 << 20)
    assert _digest_threads() == 1
    behind.close()
    release.set()
    await _until_no_digest_threads()
