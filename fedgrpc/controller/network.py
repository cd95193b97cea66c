"""What the controller does with combiner links: records, client assignment, report routing."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import TYPE_CHECKING, Any

from fedgrpc.background import BackgroundTasks
from fedgrpc.config import ControllerConfig
from fedgrpc.controller.registry import CombinerLinkState, CombinerRegistry
from fedgrpc.controller.writer import StateWriter
from fedgrpc.errors import InvalidArgument
from fedgrpc.modelstore import ModelStore
from fedgrpc.proto.messaging.v1 import messaging_pb2
from fedgrpc.proto.network.v1 import network_pb2
from fedgrpc.statestore import StateStore, now_iso
from fedgrpc.transfer import struct_to_dict

if TYPE_CHECKING:
    from fedgrpc.controller.analyses import Analyses
    from fedgrpc.controller.broker import Broker
    from fedgrpc.controller.tokens import TokenAuthority

log = logging.getLogger(__name__)


class Network:
    def __init__(
        self,
        *,
        config: ControllerConfig,
        store: StateStore,
        models: ModelStore,
        registry: CombinerRegistry,
        writer: StateWriter,
    ) -> None:
        self.config = config
        self.store = store
        self.models = models
        self.registry = registry
        self.writer = writer
        self.clients_changed = asyncio.Condition()
        # Issues and revokes tokens; None when the controller runs without authentication.
        self.authority: TokenAuthority | None = None
        self._pending_notifications = BackgroundTasks("controller network")
        # Analyses (FLAME); set by the app once built. Reports are dispatched to them.
        self.broker: Broker | None = None
        self.analyses: Analyses | None = None
        # Partial id -> digest checked when the partial arrived: a single-combiner round's
        # commit records it instead of hashing the 100 MB model once more.
        self.partial_digests: dict[str, str] = {}

    async def register(self, registration: network_pb2.RegisterCombiner) -> CombinerLinkState:
        if not registration.name or len(registration.name) > 128:
            raise InvalidArgument("combiner name must be 1 to 128 characters")
        if not registration.address:
            raise InvalidArgument("combiner registration must carry the address clients dial")
        record = await asyncio.to_thread(
            self.store.combiners.upsert,
            registration.name,
            address=registration.address,
            status="online",
            max_clients=registration.max_clients,
            connected_clients=len(registration.clients),
            last_seen=now_iso(),
        )
        link = CombinerLinkState(
            name=registration.name,
            record_id=record["id"],
            address=registration.address,
            max_clients=registration.max_clients,
        )
        self.registry.attach(link)
        for client in registration.clients:
            self._client_connected(link, client)
        # A combiner re-registering after a controller restart brings its clients back at once;
        # a resumed session waiting for min_clients must hear about them now, not at timeout.
        await self._notify_clients_changed()
        log.info("combiner %s linked (%s)", link.name, link.address)
        return link

    async def unregister(self, link: CombinerLinkState) -> None:
        if not self.registry.detach(link):
            return
        log.warning("combiner %s unlinked: %s", link.name, link.close_reason or "stream ended")
        for client_name in link.clients:
            self._client_offline(client_name)
        name = link.name
        self.writer.submit(lambda: self.store.combiners.update(link.record_id, status="offline"))
        self.writer.submit(
            lambda: self.store.clients.collection.update_many(
                {"combiner_name": name, "status": "online"}, {"status": "offline"}
            )
        )
        await self._notify_clients_changed()

    def assign(self, client_name: str, preferred: str) -> CombinerLinkState:
        if not client_name or len(client_name) > 128:
            raise InvalidArgument("client name must be 1 to 128 characters")
        return self.registry.assign(client_name, preferred)

    # --- reports --------------------------------------------------------------------------

    def handle_report(self, link: CombinerLinkState, report: network_pb2.CombinerReport) -> None:
        kind = report.WhichOneof("kind")
        if kind is None:
            return
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(link, getattr(report, kind))

    def _on_heartbeat(self, link: CombinerLinkState, beat: network_pb2.CombinerHeartbeat) -> None:
        record_id, count = link.record_id, beat.connected_clients
        self.writer.submit(
            lambda: self.store.combiners.update(
                record_id, last_seen=now_iso(), connected_clients=count
            )
        )

    def _on_client_event(self, link: CombinerLinkState, event: network_pb2.ClientEvent) -> None:
        if event.kind == network_pb2.ClientEvent.KIND_CONNECTED:
            self._client_connected(link, event.client)
        elif event.kind == network_pb2.ClientEvent.KIND_DISCONNECTED:
            self.registry.client_disconnected(link, event.client.name)
            name = event.client.name
            if self.registry.link_of_client(name) is None:  # not already back on another one
                self._client_offline(name)
            self.writer.submit(lambda: _mark_client_offline(self.store, name, link.name))
        self._notify_soon()

    def _client_connected(
        self, link: CombinerLinkState, client: network_pb2.ConnectedClient
    ) -> None:
        self.registry.client_connected(link, client.name)
        fields = {
            "status": "online",
            "combiner_name": link.name,
            "ip": client.ip,
            "last_seen": now_iso(),
        }
        if client.public_key:  # the node's X25519 key for sealed analysis data
            fields["public_key"] = base64.b64encode(client.public_key).decode()
        name = client.name
        self.writer.submit(lambda: self.store.clients.upsert(name, **fields))
        if self.broker is not None:
            self.broker.client_online(name)
        if self.analyses is not None:
            self.analyses.client_online(name)

    def _client_offline(self, name: str) -> None:
        if self.broker is not None:
            self.broker.client_offline(name)
        if self.analyses is not None:
            self.analyses.client_offline(name)

    # --- analyses (FLAME): the combiner stamped sender / recipient / node_id ---------------

    def _on_message(self, link: CombinerLinkState, envelope: messaging_pb2.Envelope) -> None:
        if self.broker is not None:
            self.broker.submit(envelope)

    def _on_ack(self, link: CombinerLinkState, ack: messaging_pb2.Ack) -> None:
        if self.broker is not None:
            self.broker.acked(ack)

    def _on_analysis_update(
        self, link: CombinerLinkState, update: messaging_pb2.AnalysisUpdate
    ) -> None:
        if self.analyses is not None:
            self.analyses.update(update)

    def _on_round_result(self, link: CombinerLinkState, result: network_pb2.RoundResult) -> None:
        if not self.registry.deliver("round", result.round_id, link.name, result):
            self._late(
                "round.late_result", link, result.round_id, result.session_id, result.model_id
            )

    def _on_validation_done(
        self, link: CombinerLinkState, done: network_pb2.ValidationDone
    ) -> None:
        self.registry.deliver("validation", done.round_id, link.name, done)

    def _on_status(self, link: CombinerLinkState, event: network_pb2.StatusEvent) -> None:
        fields = _status_fields(event)
        self.writer.submit(lambda: self.store.statuses.add(**fields))

    def _on_validation(self, link: CombinerLinkState, report: network_pb2.ValidationReport) -> None:
        fields: dict[str, Any] = {
            "model_id": report.model_id,
            "session_id": report.session_id,
            "round_id": report.round_id,
            "correlation_id": report.correlation_id,
            "sender_name": report.client_name,
            "sender_role": "client",
            "receiver_name": link.name,
            "receiver_role": "combiner",
            "metrics": struct_to_dict(report.metrics),
        }
        self.writer.submit(lambda: self.store.validations.add(**fields))

    def _late(
        self,
        event_type: str,
        link: CombinerLinkState,
        round_id: str,
        session_id: str,
        model_id: str,
    ) -> None:
        """A result for a round nobody waits for any more: record it and drop its model."""
        message = (
            f"result of combiner {link.name} for round {round_id} arrived after the round "
            "ended; dropped"
        )
        log.warning(message)
        self.writer.submit(
            lambda: self.store.statuses.add(
                event_type=event_type,
                sender_name="controller",
                sender_role="controller",
                session_id=session_id or None,
                round_id=round_id,
                log_level="WARNING",
                message=message,
            )
        )
        if model_id:
            self.writer.submit(lambda: self.models.delete(model_id))

    def _notify_soon(self) -> None:
        self._pending_notifications.spawn(self._notify_clients_changed())

    async def _notify_clients_changed(self) -> None:
        async with self.clients_changed:
            self.clients_changed.notify_all()

    async def wait_for_clients(self, count: int, timeout: float) -> bool:
        """Wait (bounded) until at least ``count`` clients are connected."""

        async def enough() -> None:
            async with self.clients_changed:
                await self.clients_changed.wait_for(lambda: self.registry.clients_online() >= count)

        try:
            await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            return False
        return True


def _mark_client_offline(store: StateStore, client_name: str, combiner_name: str) -> None:
    # Only if it is still recorded on this combiner: it may already have moved to another one.
    store.clients.collection.update_many(
        {"name": client_name, "combiner_name": combiner_name},
        {"status": "offline", "last_seen": now_iso()},
    )


def _status_fields(event: network_pb2.StatusEvent) -> dict[str, Any]:
    return {
        "event_type": event.event_type,
        "sender_name": event.sender_name,
        "sender_role": event.sender_role,
        "session_id": event.session_id or None,
        "round_id": event.round_id or None,
        "log_level": event.log_level or "INFO",
        "message": event.message,
        "data": struct_to_dict(event.data) or None,
        "correlation_id": event.correlation_id or None,
    }
