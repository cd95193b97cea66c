"""The daemons' and clients' event loop: uvloop by default, asyncio's on request."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from fedgrpc import eventloop
from fedgrpc.errors import InvalidArgument


async def loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


@pytest.mark.parametrize("value", [None, "auto", "uvloop", " UVLoop "])
def test_uvloop_is_the_default_and_can_be_insisted_on(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(eventloop.ENVIRONMENT_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(eventloop.ENVIRONMENT_VARIABLE, value)
    assert issubclass(eventloop.run(loop_type()), uvloop.Loop)


def test_asyncio_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENVIRONMENT_VARIABLE, "asyncio")
    used = eventloop.run(loop_type())
    assert not issubclass(used, uvloop.Loop)
    assert issubclass(used, asyncio.BaseEventLoop)


def test_an_unknown_choice_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENVIRONMENT_VARIABLE, "trio")
    coroutine = loop_type()
    with pytest.raises(InvalidArgument, match="FEDGRPC_EVENT_LOOP must be one of auto, uvloop"):
        eventloop.run(coroutine)
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED  # not left un-awaited


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # "import uvloop" now raises ImportError
    monkeypatch.setenv(eventloop.ENVIRONMENT_VARIABLE, "auto")
    assert eventloop.loop_factory() is asyncio.new_event_loop
    monkeypatch.setenv(eventloop.ENVIRONMENT_VARIABLE, "uvloop")
    with pytest.raises(InvalidArgument, match="uvloop is not installed"):
        eventloop.loop_factory()


def test_the_cli_reports_a_bad_choice_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedgrpc", "controller", "start", "--port", "0"],
        env={"FEDGRPC_EVENT_LOOP": "trio", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: FEDGRPC_EVENT_LOOP must be one of auto, uvloop, asyncio, got 'trio' "
        "[INVALID_ARGUMENT]"
    ]
    assert list(tmp_path.iterdir()) == []  # refused before anything was created
