"""Child processes for a node's event loop, started the way gRPC tolerates.

uvloop (libuv) starts a subprocess with ``fork()``, which runs every ``pthread_atfork`` handler,
gRPC's among them, while the daemon's gRPC threads are busy, and such a child sometimes dies of
SIGSEGV at once: 4 of 200 spawns of ``python -c pass`` beside a busy grpc.aio channel on uvloop,
none of 200 on asyncio's loop (a node's analysis then "exited with code -11"). Here the child
comes from :class:`subprocess.Popen`, which uses ``vfork``/``posix_spawn`` where it can and runs
no fork handlers (gRPC's "skipping fork() handlers" line, logged at every libuv spawn, never
appears; 0 of 400 crashed), and the loop only reads its pipes. asyncio's own loop does the same:
``Popen``, and a thread that waits for the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Mapping, Sequence
from typing import IO


class ChildProcess:
    """A started child: its stdout and stderr as stream readers, its stdin a pipe left open
    (nobody writes to it; it closes when this process dies or the child has exited)."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
    ) -> None:
        self._popen = popen
        self.stdout = stdout
        self.stderr = stderr

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def terminate(self) -> None:
        self._popen.terminate()  # a no-op once the child has been waited for

    def kill(self) -> None:
        self._popen.kill()

    async def wait(self) -> int:
        """The exit code, once the child has exited (negative: the signal that ended it)."""
        if self._popen.returncode is None:
            # Popen.wait is safe from several threads at once (a wait that timed out leaves
            # its thread waiting; a later one joins it).
            await asyncio.to_thread(self._popen.wait)
        if self._popen.stdin is not None:
            with contextlib.suppress(OSError):
                self._popen.stdin.close()
        return self._popen.returncode


async def spawn(argv: Sequence[str], *, env: Mapping[str, str]) -> ChildProcess:
    """Start ``argv`` with ``env``, its stdin, stdout and stderr pipes (see the module doc)."""
    popen = await asyncio.to_thread(
        subprocess.Popen,
        list(argv),
        env=dict(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout = await _reader(popen.stdout)
        stderr = await _reader(popen.stderr)
    except BaseException:
        popen.kill()  # subprocess reaps a dropped child at its next spawn
        raise
    return ChildProcess(popen, stdout, stderr)


async def _reader(pipe: IO[bytes] | None) -> asyncio.StreamReader:
    assert pipe is not None  # for mypy: spawn asks for pipes
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader
