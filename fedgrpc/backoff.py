"""Exponential backoff with full jitter, for every reconnect loop."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Delay before retry ``attempt`` (0-based): uniform in [0, min(cap, base * 2**attempt)].

    Full jitter spreads a crowd of clients that lost the same combiner over the whole window
    instead of letting them stampede back in lockstep.
    """

    base: float
    cap: float

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(attempt, 32)))
        return (rng or random).uniform(0.0, ceiling)
