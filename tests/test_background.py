"""Fire-and-forget tasks: kept alive until they end, their failures logged when they fail."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fedgrpc.background import BackgroundTasks


async def test_a_failing_task_is_logged_with_its_owner_and_forgotten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = BackgroundTasks("the test combiner")

    async def fail() -> None:
        raise ValueError("metadata held Infinity")

    with caplog.at_level(logging.ERROR, logger="fedgrpc.background"):
        task = tasks.spawn(fail())
        await asyncio.wait([task])
    assert len(tasks) == 0
    [record] = caplog.records
    assert "the test combiner" in record.getMessage()
    assert record.exc_info is not None
    assert "metadata held Infinity" in str(record.exc_info[1])


async def test_cancel_all_ends_running_tasks_without_logging_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = BackgroundTasks("owner")
    started = asyncio.Event()

    async def wait_forever() -> None:
        started.set()
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR, logger="fedgrpc.background"):
        task = tasks.spawn(wait_forever())
        await started.wait()
        assert list(tasks) == [task]
        await tasks.cancel_all()
    assert task.cancelled()
    assert len(tasks) == 0
    assert caplog.records == []
