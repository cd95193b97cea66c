"""Analysis traffic through a combiner (FLAME): node -> controller and controller -> node.

Whatever a node says about itself is stamped with the name of the stream it came on, never
taken from the node: the sender of a message, the recipient in an ack, the node of an update.
"""

from __future__ import annotations

from fedgrpc.proto.combiner.v1 import combiner_pb2
from fedgrpc.proto.network.v1 import network_pb2


def analysis_report(
    client_name: str, message: combiner_pb2.ClientMessage
) -> network_pb2.CombinerReport:
    """A node's message, ack or analysis update, stamped, as a report for the controller."""
    kind = message.WhichOneof("kind")
    if kind == "message":
        envelope = message.message
        envelope.sender = client_name
        return network_pb2.CombinerReport(message=envelope)
    if kind == "ack":
        ack = message.ack
        ack.recipient = client_name
        return network_pb2.CombinerReport(ack=ack)
    if kind == "analysis_update":
        update = message.analysis_update
        update.node_id = client_name
        return network_pb2.CombinerReport(analysis_update=update)
    raise ValueError(f"not an analysis message: {kind}")


def route_of(
    command: network_pb2.ControllerCommand,
) -> tuple[str, combiner_pb2.ServerMessage] | None:
    """(client name, message for it) of an analysis command; None for any other command."""
    kind = command.WhichOneof("kind")
    if kind == "deliver":
        return command.deliver.recipient, combiner_pb2.ServerMessage(message=command.deliver)
    if kind == "receipt":
        return command.receipt.sender, combiner_pb2.ServerMessage(receipt=command.receipt)
    if kind == "start_analysis":
        task = command.start_analysis
        return task.node_id, combiner_pb2.ServerMessage(start_analysis=task)
    if kind == "stop_analysis":
        stop = command.stop_analysis
        return stop.node_id, combiner_pb2.ServerMessage(stop_analysis=stop)
    return None
