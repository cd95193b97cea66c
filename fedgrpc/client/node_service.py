"""The node-local gRPC service the SDK calls (``fedgrpc.messaging.v1.NodeService``).

Served on 127.0.0.1, port 0, by the client daemon. Each call names its analysis by the secret
in ``x-fedgrpc-analysis-secret`` (given to the analysis process in its environment only).
Domain errors travel as statuses through the shared error interceptor; the SDK gets the exact
error class back from the ``fedgrpc-error`` trailing metadata.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from fedgrpc.client.host import FINISHED, READY_PING, READY_PONG, AnalysisState
from fedgrpc.client.inbox import StoredMessage
from fedgrpc.errors import FedgrpcError, InvalidArgument
from fedgrpc.proto.messaging.v1 import node_pb2, node_pb2_grpc
from fedgrpc.rpc.server import RunningServer, Service, service_name, start_server

if TYPE_CHECKING:
    from fedgrpc.client.host import AnalysisHost

SECRET_KEY = "x-fedgrpc-analysis-secret"
ERROR_KEY = "fedgrpc-error"
MAX_NODE_MESSAGE = 256 * 1024 * 1024


def _to_proto(message: StoredMessage) -> node_pb2.InboxMessage:
    proto = node_pb2.InboxMessage(
        id=message.id,
        sender=message.sender,
        recipient=message.recipient,
        category=message.category,
        body=message.body,
        status=message.status,
    )
    proto.created_at.FromNanoseconds(int(message.created_at * 1e9))
    return proto


def _timeout(seconds: float) -> float | None:
    return seconds if seconds > 0 else None


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, host: AnalysisHost) -> None:
        self.host = host

    def _state(self, context: grpc.aio.ServicerContext) -> AnalysisState:
        metadata = dict(context.invocation_metadata() or ())
        return self.host.state_for_secret(str(metadata.get(SECRET_KEY, "")))

    async def GetContext(self, request, context):  # type: ignore[no-untyped-def]
        state = self._state(context)
        self.host.mark_executing(state)
        task = state.task
        return node_pb2.AnalysisContext(
            analysis_id=task.analysis_id,
            project_id=task.project_id,
            node_id=task.node_id,
            role=task.role,
            participants=[
                node_pb2.NodeInfo(node_id=p.node_id, role=p.role) for p in task.participants
            ],
            data_sources_json=self.host.data_sources_json(),
            settings=task.settings,
            progress=state.reporter.progress,
        )

    async def SendMessage(self, request, context):  # type: ignore[no-untyped-def]
        state = self._state(context)
        unknown = sorted(set(request.receivers) - set(state.partners))
        if unknown:
            raise InvalidArgument(
                f"not partner nodes of this analysis: {', '.join(unknown)}; "
                f"partners: {', '.join(state.partners) or 'none'}"
            )
        if not request.send_id:
            raise InvalidArgument("send_id is required (the SDK picks one per message)")
        result = await self.host.messenger.send(
            analysis_id=state.task.analysis_id,
            receivers=list(request.receivers),
            category=request.category,
            body=bytes(request.body),
            send_id=request.send_id,
            attempt_timeout=_timeout(request.attempt_timeout),
        )
        return node_pb2.SendMessageResponse(
            acknowledged=result.acknowledged,
            not_acknowledged=result.not_acknowledged,
            message_ids=result.message_ids,
        )

    async def AwaitMessages(self, request, context):  # type: ignore[no-untyped-def]
        state = self._state(context)
        found = await state.inbox.wait_for(
            list(request.senders),
            request.category,
            message_id=request.message_id,
            timeout=_timeout(request.timeout),
        )
        return node_pb2.AwaitMessagesResponse(
            by_sender={
                sender: node_pb2.MessageList(messages=[_to_proto(m) for m in messages])
                for sender, messages in found.items()
            }
        )

    async def GetMessages(self, request, context):  # type: ignore[no-untyped-def]
        messages = self._state(context).inbox.select(request.status or "unread")
        return node_pb2.MessageList(messages=[_to_proto(m) for m in messages])

    async def DeleteMessages(self, request, context):  # type: ignore[no-untyped-def]
        return node_pb2.CountResponse(count=self._state(context).inbox.delete(request.message_ids))

    async def ClearMessages(self, request, context):  # type: ignore[no-untyped-def]
        inbox = self._state(context).inbox
        count = inbox.clear(request.status or "read", _timeout(request.min_age))
        return node_pb2.CountResponse(count=count)

    async def SaveData(self, request, context):  # type: ignore[no-untyped-def]
        saved = await self._state(context).data.save(request)
        return node_pb2.SaveDataResponse(object=saved)

    async def GetData(self, request, context):  # type: ignore[no-untyped-def]
        items = await self._state(context).data.get(request)
        return node_pb2.GetDataResponse(
            items=[
                node_pb2.DataItem(id=i.id, data=i.data, content_type=i.content_type) for i in items
            ]
        )

    async def ListLocalTags(self, request, context):  # type: ignore[no-untyped-def]
        local = self._state(context).data.local
        return node_pb2.ListLocalTagsResponse(tags=local.tags(request.filter or None))

    async def SubmitFinalResult(self, request, context):  # type: ignore[no-untyped-def]
        data = self._state(context).data
        return await data.submit_result(bytes(request.data), request.content_type)

    async def Report(self, request, context):  # type: ignore[no-untyped-def]
        reporter = self._state(context).reporter
        for line in request.logs:
            reporter.log(line.log_type, line.message, line.created_at)
        if request.progress >= 0:
            reporter.set_progress(request.progress)
        return node_pb2.ReportResponse(progress=reporter.progress)

    async def ReadyCheck(self, request, context):  # type: ignore[no-untyped-def]
        state = self._state(context)
        me = state.task.node_id
        others = [n for n in dict.fromkeys(request.nodes) if n != me]
        for node in others:
            self.host.messenger.send_nowait(
                analysis_id=state.task.analysis_id, receiver=node, category=READY_PING, body=b"{}"
            )
        answered = await state.inbox.wait_for(others, READY_PONG, timeout=_timeout(request.timeout))
        ready = {node: node in answered for node in others}
        if me in request.nodes:
            ready[me] = True
        return node_pb2.ReadyCheckResponse(ready=ready)

    async def Finish(self, request, context):  # type: ignore[no-untyped-def]
        state = self._state(context)
        for node in state.partners:
            self.host.messenger.send_nowait(
                analysis_id=state.task.analysis_id, receiver=node, category=FINISHED, body=b"{}"
            )
        state.finished = True
        return node_pb2.FinishResponse()


async def start_node_service(host: AnalysisHost) -> RunningServer:
    service = Service(
        servicer=_TypedErrors(NodeServicer(host)),
        add_to_server=node_pb2_grpc.add_NodeServiceServicer_to_server,
        name=service_name(node_pb2, "NodeService"),
    )
    return await start_server(
        host="127.0.0.1", port=0, services=[service], max_message_size=MAX_NODE_MESSAGE
    )


class _TypedErrors:
    """Wraps each servicer method: the analysis secret is checked before any method runs (so
    a method cannot be left open by forgetting it), and a FedgrpcError also names its class
    in the trailers (several classes share a status code, e.g. DecryptionError and DataLoss).
    """

    def __init__(self, inner: NodeServicer) -> None:
        self._inner = inner

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        method = getattr(self._inner, name)
        if not callable(method) or name.startswith("_"):
            return method

        async def call(request, context):  # type: ignore[no-untyped-def]
            try:
                self._inner._state(context)  # Unauthenticated without a known secret
                return await method(request, context)
            except FedgrpcError as error:
                context.set_trailing_metadata(((ERROR_KEY, type(error).__name__),))
                raise

        return call
