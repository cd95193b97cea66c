"""NetworkService servicer: combiner links and client assignment (thin over :class:`Network`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import grpc

from fedgrpc.controller.network import Network
from fedgrpc.controller.registry import CombinerLinkState
from fedgrpc.errors import FedgrpcError
from fedgrpc.proto.network.v1 import network_pb2, network_pb2_grpc
from fedgrpc.rpc.streams import first_message, fixed_pace, pump
from fedgrpc.security.identity import caller_token_id, check_acting_as
from fedgrpc.security.limits import validate_fields, validate_requests

log = logging.getLogger(__name__)
_HEARTBEAT = network_pb2.ControllerCommand(heartbeat=network_pb2.ControllerHeartbeat())


@validate_requests
class NetworkServicer(network_pb2_grpc.NetworkServiceServicer):
    def __init__(self, network: Network) -> None:
        self._network = network

    async def CombinerLink(
        self,
        request_iterator: AsyncIterator[network_pb2.CombinerReport],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[network_pb2.ControllerCommand]:
        registration: network_pb2.RegisterCombiner = await first_message(
            request_iterator, "register", "a combiner registration"
        )
        network = self._network
        validate_fields(registration)
        check_acting_as(registration.name, "combiner name")
        link = await network.register(registration)
        link.token_id = caller_token_id()
        config = network.config
        link.inline_model_bytes = min(registration.inline_model_bytes, config.inline_model_bytes)
        authority = network.authority
        registered = network_pb2.CombinerRegistered(
            combiner_id=link.record_id,
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
            inline_model_bytes=config.inline_model_bytes,
            **(authority.registration_fields() if authority is not None else {}),
        )
        try:
            yield network_pb2.ControllerCommand(registered=registered)
            async for command in pump(
                link,
                request_iterator,
                lambda report: _checked(link, report, network.handle_report),
                heartbeat=lambda *_: _HEARTBEAT,
                pace=fixed_pace(config.heartbeat_interval, config.heartbeat_timeout),
            ):
                yield command
        finally:
            await network.unregister(link)

    async def AssignCombiner(
        self, request: network_pb2.AssignCombinerRequest, context: grpc.aio.ServicerContext
    ) -> network_pb2.AssignCombinerResponse:
        check_acting_as(request.client_name, "client_name")
        link = self._network.assign(request.client_name, request.preferred_combiner)
        return network_pb2.AssignCombinerResponse(combiner_name=link.name, address=link.address)


def _checked(
    link: CombinerLinkState,
    report: network_pb2.CombinerReport,
    handle: Callable[[CombinerLinkState, network_pb2.CombinerReport], None],
) -> None:
    """Handle a report whose names, ids and metadata pass the limits; drop (and log) others,
    so one bad report neither reaches the statestore nor ends the link."""
    try:
        validate_fields(report)
    except FedgrpcError as error:
        log.warning("dropped a report from combiner %s: %s", link.name, error)
        return
    handle(link, report)
