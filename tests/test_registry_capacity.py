"""Combiner capacity at assignment: found by the 8,000-client benchmark, where three clients
whose AssignCombiner answers were lost to deadlines were refused forever by their own places."""

from __future__ import annotations

import pytest

from fedgrpc.controller import registry as registry_module
from fedgrpc.controller.registry import CombinerLinkState, CombinerRegistry
from fedgrpc.errors import Unavailable


def _registry(max_clients: int) -> tuple[CombinerRegistry, CombinerLinkState]:
    registry = CombinerRegistry()
    link = CombinerLinkState(name="alpha", max_clients=max_clients)
    registry.attach(link)
    return registry, link


async def test_a_client_asking_again_keeps_its_pending_place_on_a_full_combiner() -> None:
    registry, link = _registry(2)
    registry.assign("a")
    registry.client_connected(link, "a")
    registry.assign("b")  # its answer is lost; "b" asks again
    assert registry.assign("b") is link
    with pytest.raises(Unavailable, match="no combiner with free capacity"):
        registry.assign("c")
    registry.client_connected(link, "b")
    assert registry.assign("a") is link  # a connected client re-assigned to its own combiner


async def test_stale_places_free_up_even_when_the_combiner_looks_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, _ = _registry(1)
    registry.assign("ghost")  # never connects
    with pytest.raises(Unavailable):
        registry.assign("late")
    monkeypatch.setattr(registry_module, "PENDING_ASSIGNMENT_SECONDS", 0.0)
    assert registry.assign("late").name == "alpha"
