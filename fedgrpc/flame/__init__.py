"""FLAME-compatible federated analysis: node SDK, data encoding, encryption, data sources.

``from fedgrpc.flame import FlameCoreSDK`` is the one line a FLAME analysis changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedgrpc.flame.sdk import FlameCoreSDK

__all__ = ["FlameCoreSDK"]


def __getattr__(name: str) -> Any:
    # Lazy: the node daemon imports fedgrpc.flame.crypto without loading the SDK's modules.
    if name == "FlameCoreSDK":
        from fedgrpc.flame.sdk import FlameCoreSDK

        return FlameCoreSDK
    raise AttributeError(name)
