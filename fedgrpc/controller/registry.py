"""Live combiner links on the controller: who is online, their load, and who waits for them.

Round results and validation reports arrive on the links and are handed straight to the
session runner waiting for them through :class:`Collector` objects; the controller never
polls the database for combiner results.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from fedgrpc.errors import Unavailable
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.rpc.streams import StreamPeer

# A client told to use a combiner counts toward its load for this long, or until it connects,
# so a burst of assignments spreads out instead of piling onto the emptiest combiner.
PENDING_ASSIGNMENT_SECONDS = 30.0


@dataclass(eq=False)
class CombinerLinkState(StreamPeer[network_pb2.ControllerCommand]):
    """One linked combiner."""

    record_id: str = ""
    address: str = ""
    max_clients: int = 0
    # Models up to this size travel inline on this link (negotiated at registration).
    inline_model_bytes: int = 0
    clients: set[str] = field(default_factory=set)
    # Clients told to come here and not connected yet -> when; oldest first, and never a name
    # that is in ``clients``, so counting the places taken is O(1).
    pending: dict[str, float] = field(default_factory=dict)

    def load(self) -> float:
        return self._taken() / max(self.max_clients, 1)

    def has_room_for(self, client_name: str) -> bool:
        """A client already connected here, or already told to come here, keeps its place:
        a client whose AssignCombiner answer was lost (a deadline) and that asks again must not
        be refused because of its own pending place."""
        known = client_name in self.clients or client_name in self.pending
        return known or self._taken() < self.max_clients

    def hold_place(self, client_name: str) -> None:
        """Keep a place for a client just told to come here, until it connects or
        PENDING_ASSIGNMENT_SECONDS pass."""
        if client_name not in self.clients:
            self.pending.pop(client_name, None)  # re-inserted last: the dict stays oldest first
            self.pending[client_name] = time.monotonic()

    def _taken(self) -> int:
        """Connected clients plus assignments younger than PENDING_ASSIGNMENT_SECONDS.

        Expired places leave from the front of ``pending``: each assignment costs O(1), where
        rebuilding the pending places on every call made 16,000 clients' assignments O(n^2)
        (milliseconds each, so their calls timed out and retried faster than they were
        answered)."""
        cutoff = time.monotonic() - PENDING_ASSIGNMENT_SECONDS
        while self.pending:
            oldest, at = next(iter(self.pending.items()))
            if at > cutoff:
                break
            del self.pending[oldest]
        return len(self.clients) + len(self.pending)


class Collector:
    """Waits for one answer from each of a set of combiners (round results, validation ends)."""

    def __init__(self, expected: set[str]) -> None:
        self.expected = set(expected)
        self.results: dict[str, object] = {}
        self.lost: set[str] = set()
        # Done when every combiner answered or was lost. A future, not an Event: awaiting it
        # beside a stop request takes no waiter tasks, each a loop turn on the round's
        # critical path.
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._check()

    def deliver(self, combiner: str, result: object) -> bool:
        if combiner not in self.expected or combiner in self.results:
            return False
        self.results[combiner] = result
        self._check()
        return True

    def combiner_lost(self, combiner: str) -> None:
        if combiner in self.expected and combiner not in self.results:
            self.lost.add(combiner)
            self._check()

    def _check(self) -> None:
        if not self.done.done() and self.expected <= set(self.results) | self.lost:
            self.done.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """True when every combiner answered or was lost before ``timeout``."""
        await asyncio.wait({self.done}, timeout=timeout)
        return self.done.done()


class CombinerRegistry:
    def __init__(self) -> None:
        self.links: dict[str, CombinerLinkState] = {}
        self.collectors: dict[tuple[str, str], Collector] = {}

    def attach(self, link: CombinerLinkState) -> CombinerLinkState | None:
        """Add a link; returns the one it replaced (a combiner reconnecting), if any."""
        previous = self.links.get(link.name)
        self.links[link.name] = link
        if previous is not None:
            previous.close("replaced by a newer link of the same combiner")
        return previous

    def detach(self, link: CombinerLinkState) -> bool:
        """Remove a link unless a newer one replaced it; tell waiting collectors."""
        if self.links.get(link.name) is not link:
            return False
        del self.links[link.name]
        for collector in self.collectors.values():
            collector.combiner_lost(link.name)
        return True

    def online(self) -> list[CombinerLinkState]:
        return sorted(self.links.values(), key=lambda link: link.name)

    def clients_online(self) -> int:
        return sum(len(link.clients) for link in self.links.values())

    def assign(self, client_name: str, preferred: str = "") -> CombinerLinkState:
        """The preferred combiner when online and not full, else the least loaded one."""
        candidates = [link for link in self.online() if link.has_room_for(client_name)]
        if not candidates:
            raise Unavailable("no combiner with free capacity is online; try again shortly")
        chosen = next((link for link in candidates if link.name == preferred), None)
        if chosen is None:
            chosen = min(candidates, key=lambda link: (link.load(), link.name))
        chosen.hold_place(client_name)
        return chosen

    def client_connected(self, link: CombinerLinkState, client_name: str) -> None:
        for other in self.links.values():
            if other is not link:
                other.clients.discard(client_name)
                other.pending.pop(client_name, None)
        link.clients.add(client_name)
        link.pending.pop(client_name, None)

    def link_of_client(self, client_name: str) -> CombinerLinkState | None:
        """The link of the combiner ``client_name`` is connected to, if it is connected."""
        for link in self.links.values():
            if client_name in link.clients:
                return link
        return None

    def client_disconnected(self, link: CombinerLinkState, client_name: str) -> None:
        link.clients.discard(client_name)

    def expect(self, kind: str, round_id: str, combiners: set[str]) -> Collector:
        collector = Collector(combiners)
        self.collectors[(kind, round_id)] = collector
        return collector

    def forget(self, kind: str, round_id: str) -> None:
        self.collectors.pop((kind, round_id), None)

    def deliver(self, kind: str, round_id: str, combiner: str, result: object) -> bool:
        """Hand a result to whoever waits for it; False when nobody does (a late result)."""
        collector = self.collectors.get((kind, round_id))
        return collector is not None and collector.deliver(combiner, result)
