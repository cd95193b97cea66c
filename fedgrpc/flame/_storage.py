"""FLAME's storage calls: final result, intermediate data (local/global, sealed), local tags.

Data is encoded with :mod:`fedgrpc.flame.codec` (JSON, numpy, bytes; pickle only when the SDK
was created with ``allow_pickle=True``). Sealing for ``remote_node_ids`` and opening with
``sender_node_id`` happen in the node daemon, which alone holds the node's private key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

from fedgrpc.errors import InvalidArgument, PermissionDenied
from fedgrpc.flame import codec
from fedgrpc.flame._messaging import MessagingMixin
from fedgrpc.flame._node import NodeConnection
from fedgrpc.flame.dp import LocalDifferentialPrivacyParams, apply_local_dp
from fedgrpc.proto.messaging.v1 import node_pb2


class StorageMixin(MessagingMixin):
    _node: NodeConnection
    _allow_pickle: bool

    def get_role(self) -> str:  # provided by the SDK
        raise NotImplementedError

    def get_id(self) -> str:  # provided by the SDK
        raise NotImplementedError

    def submit_final_result(
        self,
        result: Any,
        output_type: Literal["str", "bytes", "pickle"] = "str",
        local_dp: LocalDifferentialPrivacyParams | None = None,
    ) -> dict[str, str]:
        """Aggregator only. ``local_dp`` adds Laplace noise here, on the node, first."""
        if self.get_role() != "aggregator":
            raise PermissionDenied(
                f"submit_final_result is for the aggregator; this node's role is "
                f"{self.get_role()!r}"
            )
        if local_dp is not None:
            result = apply_local_dp(result, cast(Mapping[str, float], local_dp))
        data, content_type = codec.final_result_bytes(result, output_type)
        response = self._node.call(
            self._node.stub.SubmitFinalResult,
            node_pb2.SubmitFinalResultRequest(data=data, content_type=content_type),
        )
        return {"status": response.status, "id": response.id, "url": response.url}

    def save_intermediate_data(
        self,
        data: Any,
        location: Literal["local", "global"],
        remote_node_ids: list[str] | None = None,
        tag: str | None = None,
    ) -> dict[str, dict[str, str]] | dict[str, str]:
        """``{"status", "url", "id"}``; with remote_node_ids one such dict per node id."""
        payload, content_type = codec.encode_data(data, allow_pickle=self._allow_pickle)
        response = self._node.call(
            self._node.stub.SaveData,
            node_pb2.SaveDataRequest(
                location=location,
                data=payload,
                content_type=content_type,
                tag=tag or "",
                remote_node_ids=remote_node_ids or [],
            ),
        )
        saved = {
            "status": response.object.status,
            "url": response.object.url,
            "id": response.object.id,
        }
        if remote_node_ids:
            # One blob sealed for all of them: every recipient reads the same id.
            return {node: dict(saved) for node in dict.fromkeys(remote_node_ids)}
        return saved

    def get_intermediate_data(
        self,
        location: Literal["local", "global"],
        id: str | None = None,
        tag: str | None = None,
        tag_option: Literal["all", "last", "first"] | None = "all",
        sender_node_id: str | None = None,
    ) -> Any:
        """The data with ``id``; by ``tag``, a list for "all", else the first or last one."""
        if (id is None) == (tag is None):
            raise InvalidArgument("get_intermediate_data needs exactly one of id and tag")
        response = self._node.call(
            self._node.stub.GetData,
            node_pb2.GetDataRequest(
                location=location,
                id=id or "",
                tag=tag or "",
                tag_option=tag_option or "all",
                sender_node_id=sender_node_id or "",
            ),
        )
        values = [
            codec.decode_data(i.data, i.content_type, allow_pickle=self._allow_pickle)
            for i in response.items
        ]
        if tag is not None and (tag_option or "all") == "all":
            return values
        return values[0]

    def send_intermediate_data(
        self,
        receivers: list[str],
        data: Any,
        message_category: str = "intermediate_data",
        max_attempts: int = 1,
        timeout: float | None = None,
        attempt_timeout: int = 10,
        encrypted: bool = True,
    ) -> tuple[list[str], list[str]]:
        """Save globally (sealed for the receivers when ``encrypted``), then message the id."""
        saved = self.save_intermediate_data(
            data, "global", remote_node_ids=list(receivers) if encrypted else None
        )
        first = next(iter(saved.values())) if encrypted else saved
        object_id = cast(dict[str, str], first)["id"]
        body = {"id": object_id, "encrypted": encrypted}
        return self.send_message(
            receivers, message_category, body, max_attempts, timeout, attempt_timeout
        )

    def await_intermediate_data(
        self,
        senders: list[str],
        message_category: str = "intermediate_data",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """The data each sender sent with send_intermediate_data (None for those missing)."""
        messages = self.await_messages(senders, message_category, timeout=timeout)
        found: dict[str, Any] = {}
        for sender in senders:
            received = messages.get(sender)
            if not received:
                found[sender] = None
                continue
            body = received[-1].body
            found[sender] = self.get_intermediate_data(
                "global",
                id=str(body["id"]),
                sender_node_id=sender if body.get("encrypted") else None,
            )
        return found

    def get_local_tags(self, filter: str | None = None) -> list[str]:
        response = self._node.call(
            self._node.stub.ListLocalTags, node_pb2.ListLocalTagsRequest(filter=filter or "")
        )
        return list(response.tags)
