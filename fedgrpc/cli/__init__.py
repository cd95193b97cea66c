"""The ``fedgrpc`` command line: one click module per command group, registered here."""

from __future__ import annotations

from fedgrpc.cli.root import main

__all__ = ["main"]
