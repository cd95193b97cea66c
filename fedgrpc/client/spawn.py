"""Child processes for a node's event loop, started the way gRPC tolerates.

uvloop (libuv) starts a subprocess with ``fork()``, which runs every ``pthread_atfork`` handler,
gRPC's among them, while the daemon's gRPC threads are busy, and such a child sometimes dies of
SIGSEGV at once: 4 of 200 spawns of ``python -c pass`` beside a busy grpc.aio channel on uvloop,
none of 200 on asyncio's loop (a node's analysis then "exited with code -11"). Here the child
comes from :class:`subprocess.Popen`, which uses ``vfork``/``posix_spawn`` where it can and runs
no fork handlers (gRPC's "skipping fork() handlers" line, logged at every libuv spawn, never
appears; 0 of 400 crashed), and the loop only reads its output. asyncio's own loop does the same:
``Popen``, and a thread that waits for the child.

The child's stdout and stderr are socket pairs, not pipes. uvloop's ``connect_read_pipe``
closes a pipe's descriptor twice at EOF (libuv, then the file object), and the second close
can hit a descriptor another thread has just been given: CI saw the next spawn's fresh pipe
closed under it (EBADF). A socket handed to the loop is detached, so it is closed once, on
either loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import Mapping, Sequence


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
    """Start ``argv`` with ``env``, its stdin a pipe, its stdout and stderr sockets read by the
    loop (see the module doc)."""
    out_parent, out_child = socket.socketpair()
    err_parent, err_child = socket.socketpair()
    try:
        popen = await asyncio.to_thread(
            _popen, list(argv), dict(env), out_child.fileno(), err_child.fileno()
        )
    except BaseException:
        for end in (out_parent, err_parent):
            end.close()
        raise
    finally:
        # The child has its own copies; ours must go, or the parent never sees EOF.
        out_child.close()
        err_child.close()
    try:
        stdout = await _reader(out_parent)
        stderr = await _reader(err_parent)
    except BaseException:
        popen.kill()  # subprocess reaps a dropped child at its next spawn
        raise
    return ChildProcess(popen, stdout, stderr)


def _popen(
    argv: list[str], env: dict[str, str], stdout: int, stderr: int
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr)


class _ReadOnlyProtocol(asyncio.StreamReaderProtocol):
    def eof_received(self) -> bool:
        super().eof_received()
        return False  # nothing is written back: close the transport (and socket) at EOF


async def _reader(end: socket.socket) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    try:
        await loop.create_unix_connection(lambda: _ReadOnlyProtocol(reader), sock=end)
    except BaseException:
        end.close()
        raise
    return reader
