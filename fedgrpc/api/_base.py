"""What every group of :class:`~fedgrpc.api.APIClient` methods works through."""

from __future__ import annotations

from typing import Any

from fedgrpc.api._generated import ControlClientBase
from fedgrpc.api._transfer import ModelClient


class APIBase:
    """The two services of the controller, as typed sync clients."""

    control: ControlClientBase
    """The generated ``ControlService`` client: every RPC, every field, typed messages."""
    _model_service: ModelClient


def page(n_max: int | None) -> dict[str, Any] | None:
    """FEDn's ``n_max`` as a ``PageRequest``: None (or 0) fetches everything."""
    return None if n_max is None else {"limit": n_max}


# A count needs no records: one is the smallest page (0 would mean "no limit").
COUNT_ONLY = {"limit": 1}
