"""Combiner capacity at assignment: found by the 8,000-client benchmark, where three clients
whose AssignCombiner answers were lost to deadlines were refused forever by their own places."""

from __future__ import annotations

from types import SimpleNamespace

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


async def test_places_are_counted_once_whatever_the_order_of_events() -> None:
    registry, link = _registry(3)
    registry.assign("a")
    registry.client_connected(link, "a")
    registry.assign("a")  # connected and asking again: no second place
    registry.assign("b")
    registry.assign("b")
    assert link.load() == pytest.approx(2 / 3)
    other = CombinerLinkState(name="beta", max_clients=3)
    registry.attach(other)
    registry.client_connected(other, "b")  # went elsewhere: its place here is freed
    assert link.load() == pytest.approx(1 / 3)
    assert other.load() == pytest.approx(1 / 3)


def test_expired_places_leave_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    registry, link = _registry(10)
    now = [100.0]
    monkeypatch.setattr(registry_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    registry.assign("old")
    now[0] = 120.0
    registry.assign("young")
    registry.assign("old")  # asking again renews its place
    now[0] = 140.0  # "old"'s first place would have expired, its renewed one has not
    assert link.load() == pytest.approx(2 / 10)
    now[0] = 150.5  # "young" (120) has expired, "old" (120, renewed after it) too
    assert link.load() == 0.0
    assert link.pending == {}
