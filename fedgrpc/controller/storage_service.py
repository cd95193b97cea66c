"""StorageService servicer: what analysis nodes store on the controller (thin over storage)."""

from __future__ import annotations

import asyncio
from typing import TypeAlias

import grpc

from fedgrpc.controller import storage
from fedgrpc.controller.flame_records import object_message
from fedgrpc.modelstore import ModelStore
from fedgrpc.proto.messaging.v1 import messaging_pb2 as mpb
from fedgrpc.proto.messaging.v1 import messaging_pb2_grpc
from fedgrpc.security.identity import check_acting_as
from fedgrpc.security.limits import validate_requests
from fedgrpc.statestore import StateStore

Context: TypeAlias = grpc.aio.ServicerContext


@validate_requests
class StorageServicer(messaging_pb2_grpc.StorageServiceServicer):
    """Every request names the calling node; a client token may only name itself (the
    storage functions then check that the node belongs to the analysis)."""

    def __init__(self, store: StateStore, blobs: ModelStore) -> None:
        self._store = store
        self._blobs = blobs

    async def PutObject(self, request: mpb.PutObjectRequest, context: Context) -> mpb.StoredObject:
        check_acting_as(request.node_id, "node id")
        record = await asyncio.to_thread(
            storage.put_object,
            self._store,
            self._blobs,
            analysis_id=request.analysis_id,
            node_id=request.node_id,
            data=request.data,
            tag=request.tag,
            content_type=request.content_type,
            recipients=list(request.recipients),
            sha256=request.sha256,
            object_id=request.id,
        )
        return object_message(record)

    async def GetObject(self, request: mpb.GetObjectRequest, context: Context) -> mpb.ObjectData:
        check_acting_as(request.node_id, "node id")
        record, data = await asyncio.to_thread(
            storage.get_object,
            self._store,
            self._blobs,
            analysis_id=request.analysis_id,
            node_id=request.node_id,
            object_id=request.id,
        )
        return mpb.ObjectData(info=object_message(record), data=data)

    async def ListObjects(
        self, request: mpb.ListObjectsRequest, context: Context
    ) -> mpb.ListObjectsResponse:
        check_acting_as(request.node_id, "node id")
        records = await asyncio.to_thread(
            storage.list_objects,
            self._store,
            analysis_id=request.analysis_id,
            node_id=request.node_id,
            tag=request.tag,
            sender=request.sender,
        )
        return mpb.ListObjectsResponse(objects=[object_message(r) for r in records])

    async def SubmitResult(
        self, request: mpb.SubmitResultRequest, context: Context
    ) -> mpb.StoredObject:
        check_acting_as(request.node_id, "node id")
        record = await asyncio.to_thread(
            storage.submit_result,
            self._store,
            self._blobs,
            analysis_id=request.analysis_id,
            node_id=request.node_id,
            data=request.data,
            content_type=request.content_type,
            sha256=request.sha256,
        )
        return object_message(record)
