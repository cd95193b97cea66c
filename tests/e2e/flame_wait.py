"""A FLAME analysis that does not end by itself: default nodes wait for word from the
aggregator, which waits for word from them (the e2e test kills a node in the middle)."""

from __future__ import annotations

from fedgrpc.flame import FlameCoreSDK


def main() -> None:
    flame = FlameCoreSDK(silent=True)
    flame.set_progress(10)
    others = [node for node in flame.get_participant_ids() if node != flame.get_id()]
    flame.flame_log("waiting for the others", log_type="info")
    flame.await_messages(others, "never-sent", timeout=None)  # blocks on a condition, no polling
