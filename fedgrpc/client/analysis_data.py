"""Intermediate data and final results of one analysis, node side.

Sealing and opening happen here, in the daemon, because the node's private key never goes to
the analysis process. Global data goes to the controller's StorageService, which only ever
holds the (possibly sealed) bytes; local data stays in :class:`LocalStorage`.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from fedgrpc.client.local_storage import LocalStorage
from fedgrpc.errors import DecryptionError, InvalidArgument, NotFound, PermissionDenied
from fedgrpc.flame import crypto
from fedgrpc.proto.messaging.v1 import messaging_pb2, messaging_pb2_grpc, node_pb2
from fedgrpc.rpc.channel import call

SEALED_CONTENT_PREFIX = "sealed+"
TAG_OPTIONS = ("all", "first", "last")


@dataclass(frozen=True)
class Item:
    id: str
    data: bytes
    content_type: str
    sender: str


class AnalysisData:
    """save/get for one analysis on this node."""

    def __init__(
        self,
        *,
        task: messaging_pb2.AnalysisTask,
        keys: crypto.NodeKeys,
        local: LocalStorage,
        storage: messaging_pb2_grpc.StorageServiceStub | None,
    ) -> None:
        self._task = task
        self._keys = keys
        self._local = local
        self._storage = storage
        self._public = {p.node_id: bytes(p.public_key) for p in task.participants}

    @property
    def local(self) -> LocalStorage:
        return self._local

    @property
    def node_id(self) -> str:
        return self._task.node_id

    # --- save -----------------------------------------------------------------------------

    async def save(self, request: node_pb2.SaveDataRequest) -> node_pb2.SavedObject:
        if request.location == "local":
            if request.remote_node_ids:
                raise InvalidArgument(
                    "remote_node_ids applies to global data: local data never leaves this node"
                )
            record = await asyncio.to_thread(
                self._local.put,
                bytes(request.data),
                content_type=request.content_type,
                tag=request.tag,
                analysis_id=self._task.analysis_id,
            )
            url = (self._local.root / "objects" / record.id).as_uri()
            return node_pb2.SavedObject(id=record.id, url=url, status="success")
        _check_location(request.location)
        # The node picks the storage id, so sealed data is bound to the id it is stored under
        # (the controller cannot swap two objects of the same sender and recipients).
        object_id = uuid.uuid4().hex
        data, content_type, recipients = bytes(request.data), request.content_type, []
        if request.remote_node_ids:
            recipients = list(dict.fromkeys(request.remote_node_ids))
            data = self._seal(data, recipients, object_id)
            content_type = SEALED_CONTENT_PREFIX + content_type
        stored = await call(
            self._stub().PutObject,
            messaging_pb2.PutObjectRequest(
                analysis_id=self._task.analysis_id,
                node_id=self.node_id,
                tag=request.tag,
                content_type=content_type,
                data=data,
                recipients=recipients,
                sha256=hashlib.sha256(data).hexdigest(),
                id=object_id,
            ),
        )
        return node_pb2.SavedObject(id=stored.id, url=self._url(stored.id), status="success")

    def _seal(self, data: bytes, recipients: Sequence[str], object_id: str) -> bytes:
        unknown = [r for r in recipients if not self._public.get(r)]
        if unknown:
            raise InvalidArgument(
                f"no public key for {', '.join(unknown)}: encryption needs nodes of this "
                "analysis that sent their key at connect"
            )
        return crypto.seal(
            data,
            sender=self._keys,
            sender_id=self.node_id,
            recipients={r: self._public[r] for r in recipients},
            analysis_id=self._task.analysis_id,
            object_id=object_id,
        )

    async def submit_result(
        self, data: bytes, content_type: str
    ) -> node_pb2.SubmitFinalResultResponse:
        if self._task.role != "aggregator":
            raise PermissionDenied(
                f"only the aggregator submits the final result; this node's role is "
                f"{self._task.role!r}"
            )
        stored = await call(
            self._stub().SubmitResult,
            messaging_pb2.SubmitResultRequest(
                analysis_id=self._task.analysis_id,
                node_id=self.node_id,
                content_type=content_type,
                data=data,
                sha256=hashlib.sha256(data).hexdigest(),
            ),
        )
        return node_pb2.SubmitFinalResultResponse(
            id=stored.id, status="success", url=self._url(stored.id)
        )

    # --- get ------------------------------------------------------------------------------

    async def get(self, request: node_pb2.GetDataRequest) -> list[Item]:
        if bool(request.id) == bool(request.tag):
            raise InvalidArgument("give exactly one of id and tag")
        option = request.tag_option or "all"
        if option not in TAG_OPTIONS:
            raise InvalidArgument(f"tag_option must be one of {', '.join(TAG_OPTIONS)}")
        if request.location == "local":
            items = await asyncio.to_thread(self._get_local, request.id, request.tag)
        else:
            _check_location(request.location)
            items = await self._get_global(request.id, request.tag, request.sender_node_id)
        if request.tag and option != "all":
            items = items[:1] if option == "first" else items[-1:]
        return [self._open(item, request.sender_node_id) for item in items]

    def _get_local(self, object_id: str, tag: str) -> list[Item]:
        if object_id:
            record, data = self._local.get(object_id)
            return [Item(record.id, data, record.content_type, self.node_id)]
        records = self._local.by_tag(tag)
        if not records:
            raise NotFound(f"no local intermediate data tagged {tag!r}")
        return [Item(r.id, self._local.get(r.id)[1], r.content_type, self.node_id) for r in records]

    async def _get_global(self, object_id: str, tag: str, sender: str) -> list[Item]:
        if object_id:
            ids = [object_id]
        else:
            listed = await call(
                self._stub().ListObjects,
                messaging_pb2.ListObjectsRequest(
                    analysis_id=self._task.analysis_id, node_id=self.node_id, tag=tag, sender=sender
                ),
            )
            ids = [o.id for o in listed.objects]
            if not ids:
                raise NotFound(f"no global intermediate data tagged {tag!r}")
        items = []
        for i in ids:
            got = await call(
                self._stub().GetObject,
                messaging_pb2.GetObjectRequest(
                    analysis_id=self._task.analysis_id, node_id=self.node_id, id=i
                ),
            )
            items.append(Item(got.info.id, bytes(got.data), got.info.content_type, got.info.sender))
        return items

    def _open(self, item: Item, sender_node_id: str) -> Item:
        if not item.content_type.startswith(SEALED_CONTENT_PREFIX):
            return item
        sender = sender_node_id or item.sender
        if item.sender and sender != item.sender:
            raise DecryptionError(f"object {item.id} was stored by {item.sender}, not {sender}")
        public = self._public.get(sender)
        if not public:
            raise DecryptionError(f"no public key for sender {sender!r}")
        plain = crypto.open_sealed(
            item.data,
            keys=self._keys,
            node_id=self.node_id,
            sender_id=sender,
            sender_public=public,
            analysis_id=self._task.analysis_id,
            object_id=item.id,  # the storage id: a blob moved under another id does not open
        )
        return Item(item.id, plain, item.content_type.removeprefix(SEALED_CONTENT_PREFIX), sender)

    def _stub(self) -> messaging_pb2_grpc.StorageServiceStub:
        if self._storage is None:
            raise InvalidArgument("this node has no controller connection for global data")
        return self._storage

    def _url(self, object_id: str) -> str:
        return f"fedgrpc://controller/analyses/{self._task.analysis_id}/objects/{object_id}"


def _check_location(location: str) -> None:
    if location != "global":
        raise InvalidArgument(f"location must be 'local' or 'global', got {location!r}")
