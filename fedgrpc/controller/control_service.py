"""ControlService servicer: request messages -> :class:`ControlAPI` calls -> response messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from fedgrpc.controller.api import ControlAPI
from fedgrpc.controller.flame_records import analysis_message, log_message, object_message
from fedgrpc.controller.records import page_args, present_filters, to_message
from fedgrpc.proto.control.v1 import control_pb2 as pb
from fedgrpc.proto.control.v1 import control_pb2_grpc
from fedgrpc.security.limits import validate_requests
from fedgrpc.statestore import ListResult
from fedgrpc.transfer import struct_to_dict

Context: TypeAlias = grpc.aio.ServicerContext

_SESSION_SETTINGS = (
    "aggregator",
    "model_id",
    "round_timeout",
    "rounds",
    "round_buffer_size",
    "delete_models",
    "validate",
    "helper",
    "min_clients",
    "requested_clients",
    "round_failure_policy",
    "max_consecutive_failures",
    "seed",
)


def _listed(found: ListResult, response_type: type[Any], record_type: type[Any]) -> Any:
    return response_type(
        count=found["count"], result=[to_message(r, record_type) for r in found["result"]]
    )


@validate_requests
class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    def __init__(self, api: ControlAPI) -> None:
        self._api = api

    async def GetControllerStatus(self, request: Any, context: Context) -> pb.ControllerStatus:
        return to_message(await self._api.controller_status(), pb.ControllerStatus)

    # --- sessions -------------------------------------------------------------------------

    async def StartSession(self, request: pb.StartSessionRequest, context: Context) -> pb.Session:
        settings = present_filters(request, _SESSION_SETTINGS)
        if request.HasField("aggregator_kwargs"):
            settings["aggregator_kwargs"] = struct_to_dict(request.aggregator_kwargs)
        if request.HasField("client_settings"):
            settings["client_settings"] = struct_to_dict(request.client_settings)
        session = await self._api.start_session(
            session_id=request.id or None, name=request.name or None, settings=settings
        )
        return to_message(session, pb.Session)

    async def ContinueSession(
        self, request: pb.ContinueSessionRequest, context: Context
    ) -> pb.Session:
        session = await self._api.continue_session(
            request.session_id,
            rounds=request.rounds if request.HasField("rounds") else None,
            round_timeout=request.round_timeout if request.HasField("round_timeout") else None,
        )
        return to_message(session, pb.Session)

    async def StopSession(self, request: pb.StopSessionRequest, context: Context) -> pb.Session:
        return to_message(await self._api.stop_session(request.session_id), pb.Session)

    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> pb.Session:
        return to_message(await self._api.get_session(request.id), pb.Session)

    async def ListSessions(self, request: pb.ListSessionsRequest, context: Context) -> Any:
        found = await self._api.list_sessions(
            **page_args(request.page), **present_filters(request, ("status",))
        )
        return _listed(found, pb.ListSessionsResponse, pb.Session)

    # --- models ---------------------------------------------------------------------------

    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> pb.Model:
        return to_message(await self._api.get_model(request.id), pb.Model)

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> Any:
        filters = present_filters(request, ("session_id",))
        found = await self._api.list_models(**page_args(request.page), **filters)
        return _listed(found, pb.ListModelsResponse, pb.Model)

    async def GetActiveModel(self, request: Any, context: Context) -> pb.Model:
        return to_message(await self._api.get_active_model(), pb.Model)

    async def SetActiveModel(self, request: pb.SetActiveModelRequest, context: Context) -> pb.Model:
        return to_message(await self._api.set_active_model(request.model_id), pb.Model)

    async def GetModelAncestors(self, request: pb.ModelLineageRequest, context: Context) -> Any:
        found = await self._api.model_lineage(
            request.model_id,
            descendants=False,
            limit=request.limit,
            include_self=request.include_self,
        )
        return _listed(found, pb.ListModelsResponse, pb.Model)

    async def GetModelDescendants(self, request: pb.ModelLineageRequest, context: Context) -> Any:
        found = await self._api.model_lineage(
            request.model_id,
            descendants=True,
            limit=request.limit,
            include_self=request.include_self,
        )
        return _listed(found, pb.ListModelsResponse, pb.Model)

    # --- clients and combiners ------------------------------------------------------------

    async def GetClient(self, request: pb.GetClientRequest, context: Context) -> pb.Client:
        return to_message(await self._api.get_named(self._api.store.clients, request.id), pb.Client)

    async def ListClients(self, request: pb.ListClientsRequest, context: Context) -> Any:
        filters = present_filters(request, ("status", "combiner_name"))
        found = await self._api.list("clients", **page_args(request.page), **filters)
        return _listed(found, pb.ListClientsResponse, pb.Client)

    async def GetCombiner(self, request: pb.GetCombinerRequest, context: Context) -> pb.Combiner:
        return to_message(
            await self._api.get_named(self._api.store.combiners, request.id), pb.Combiner
        )

    async def ListCombiners(self, request: pb.ListCombinersRequest, context: Context) -> Any:
        filters = present_filters(request, ("status",))
        found = await self._api.list("combiners", **page_args(request.page), **filters)
        return _listed(found, pb.ListCombinersResponse, pb.Combiner)

    # --- rounds, statuses, validations ----------------------------------------------------

    async def GetRound(self, request: pb.GetRoundRequest, context: Context) -> pb.Round:
        return to_message(await self._api.get("rounds", request.id), pb.Round)

    async def ListRounds(self, request: pb.ListRoundsRequest, context: Context) -> Any:
        filters = present_filters(request, ("session_id", "status"))
        found = await self._api.list("rounds", **page_args(request.page), **filters)
        return _listed(found, pb.ListRoundsResponse, pb.Round)

    async def GetStatus(self, request: pb.GetStatusRequest, context: Context) -> pb.Status:
        return to_message(await self._api.get("statuses", request.id), pb.Status)

    async def ListStatuses(self, request: pb.ListStatusesRequest, context: Context) -> Any:
        names = ("session_id", "event_type", "sender_name", "sender_role", "round_id", "log_level")
        found = await self._api.list(
            "statuses", **page_args(request.page), **present_filters(request, names)
        )
        return _listed(found, pb.ListStatusesResponse, pb.Status)

    async def GetValidation(
        self, request: pb.GetValidationRequest, context: Context
    ) -> pb.Validation:
        return to_message(await self._api.get("validations", request.id), pb.Validation)

    async def ListValidations(self, request: pb.ListValidationsRequest, context: Context) -> Any:
        names = (
            "session_id",
            "model_id",
            "correlation_id",
            "sender_name",
            "sender_role",
            "receiver_name",
            "receiver_role",
            "round_id",
        )
        found = await self._api.list(
            "validations", **page_args(request.page), **present_filters(request, names)
        )
        return _listed(found, pb.ListValidationsResponse, pb.Validation)

    # --- compute packages -----------------------------------------------------------------

    async def UploadPackage(
        self, request_iterator: AsyncIterator[pb.PackageChunk], context: Context
    ) -> pb.Package:
        return to_message(await self._api.upload_package(request_iterator), pb.Package)

    async def SetActivePackage(
        self, request: pb.SetActivePackageRequest, context: Context
    ) -> pb.Package:
        return to_message(await self._api.set_active_package(request.id), pb.Package)

    async def GetActivePackage(self, request: Any, context: Context) -> pb.Package:
        return to_message(await self._api.get_active_package(), pb.Package)

    async def GetPackage(self, request: pb.GetPackageRequest, context: Context) -> pb.Package:
        return to_message(await self._api.get_package(request.id), pb.Package)

    async def ListPackages(self, request: pb.ListPackagesRequest, context: Context) -> Any:
        filters = present_filters(request, ("name",))
        found = await self._api.list_packages(**page_args(request.page), **filters)
        return _listed(found, pb.ListPackagesResponse, pb.Package)

    async def DownloadPackage(
        self, request: pb.DownloadPackageRequest, context: Context
    ) -> AsyncIterator[pb.PackageChunk]:
        async for message in self._api.download_package(request.id):
            yield message

    async def GetClientConfig(
        self, request: pb.GetClientConfigRequest, context: Context
    ) -> pb.ClientConfig:
        return to_message(await self._api.client_config(checksum=request.checksum), pb.ClientConfig)

    # --- tokens ---------------------------------------------------------------------------

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: Context
    ) -> pb.CreateTokenResponse:
        created = await self._api.create_token(
            role=request.role,
            subject=request.subject,
            expires_in=request.expires_in if request.HasField("expires_in") else None,
            scope=request.scope or None,
        )
        return pb.CreateTokenResponse(**created)

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: Context
    ) -> pb.RevokeTokenResponse:
        return pb.RevokeTokenResponse(**await self._api.revoke_token(request.token_id))

    # --- analyses (FLAME) -----------------------------------------------------------------

    async def StartAnalysis(
        self, request: pb.StartAnalysisRequest, context: Context
    ) -> pb.Analysis:
        record = await self._api.start_analysis(
            analysis_id=request.analysis_id,
            project_id=request.project_id,
            entrypoint=request.entrypoint,
            package_id=request.package_id,
            nodes=list(request.nodes),
            aggregator=request.aggregator,
            settings=struct_to_dict(request.settings),
            timeout_seconds=request.timeout_seconds,
        )
        return analysis_message(record)

    async def GetAnalysis(self, request: pb.GetAnalysisRequest, context: Context) -> pb.Analysis:
        return analysis_message(await self._api.get_analysis(request.analysis_id))

    async def ListAnalyses(self, request: pb.ListAnalysesRequest, context: Context) -> Any:
        filters = present_filters(request, ("project_id", "status"))
        found = await self._api.list_analyses(**page_args(request.page), **filters)
        return pb.ListAnalysesResponse(
            count=found["count"], result=[analysis_message(r) for r in found["result"]]
        )

    async def StopAnalysis(self, request: pb.StopAnalysisRequest, context: Context) -> pb.Analysis:
        return analysis_message(await self._api.stop_analysis(request.analysis_id))

    async def GetAnalysisLogs(
        self, request: pb.GetAnalysisLogsRequest, context: Context
    ) -> pb.GetAnalysisLogsResponse:
        records = await self._api.analysis_logs(
            request.analysis_id, request.node_id, request.log_type
        )
        return pb.GetAnalysisLogsResponse(logs=[log_message(r) for r in records])

    async def DownloadAnalysisResult(
        self, request: pb.DownloadAnalysisResultRequest, context: Context
    ) -> pb.AnalysisResult:
        record, data = await self._api.analysis_result(request.analysis_id)
        return pb.AnalysisResult(info=object_message(record), data=data)
