"""Analyses the node-service tests run as real processes."""

from __future__ import annotations

import sys
import time

from fedgrpc.flame import FlameCoreSDK


def succeed() -> None:
    flame = FlameCoreSDK(silent=True)
    flame.set_progress(50)
    flame.flame_log(f"hello from {flame.get_id()}")


def crash() -> None:
    FlameCoreSDK(silent=True)
    print("about to fail", file=sys.stderr)
    raise RuntimeError("boom")


def hang() -> None:
    FlameCoreSDK(silent=True)
    while True:
        time.sleep(1)


def error_log() -> None:
    FlameCoreSDK(silent=True).flame_log("cannot go on", log_type="error")
