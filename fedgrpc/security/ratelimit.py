"""Bookkeeping for the limits the auth interceptor enforces (pure, no gRPC, easy to test)."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

DEFAULT_MAX_FAILURES = 10
DEFAULT_FAILURE_WINDOW = 60.0
DEFAULT_MAX_STREAMS = 64
# Bounds the memory a scan from many addresses can make us spend on remembering failures.
_MAX_TRACKED_PEERS = 10_000


class FailureLimiter:
    """Counts failed authentications per peer in a sliding window.

    A peer with ``max_failures`` failures in the last ``window`` seconds is blocked until the
    oldest of them leaves the window; refused attempts while blocked are not counted, so a
    peer always recovers ``window`` seconds after its last real failure at the latest.
    """

    def __init__(
        self,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window: float = DEFAULT_FAILURE_WINDOW,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1 or window <= 0:
            raise ValueError("max_failures must be >= 1 and window > 0")
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def blocked(self, peer: str) -> bool:
        failures = self._recent(peer)
        return failures is not None and len(failures) >= self.max_failures

    def record(self, peer: str) -> None:
        failures = self._recent(peer)
        if failures is None:
            failures = self._failures[peer] = deque()
            if len(self._failures) > _MAX_TRACKED_PEERS:
                self._failures.popitem(last=False)  # forget the oldest peer
        failures.append(self._clock())

    def _recent(self, peer: str) -> deque[float] | None:
        failures = self._failures.get(peer)
        if failures is None:
            return None
        horizon = self._clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[peer]
            return None
        return failures


class StreamLimiter:
    """Counts open streaming calls per token subject and refuses more than ``max_streams``."""

    def __init__(self, max_streams: int = DEFAULT_MAX_STREAMS) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be >= 1")
        self.max_streams = max_streams
        self._open: dict[str, int] = {}

    def acquire(self, subject: str) -> bool:
        count = self._open.get(subject, 0)
        if count >= self.max_streams:
            return False
        self._open[subject] = count + 1
        return True

    def release(self, subject: str) -> None:
        count = self._open.get(subject, 0) - 1
        if count > 0:
            self._open[subject] = count
        else:
            self._open.pop(subject, None)

    def open_streams(self, subject: str) -> int:
        return self._open.get(subject, 0)
