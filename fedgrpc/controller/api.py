"""The control API as plain async functions over the statestore and the session manager.

The ControlService servicer only translates messages to these calls and back; anything with a
rule in it lives here or below.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fedgrpc._version import __version__
from fedgrpc.controller import packages, storage
from fedgrpc.controller.analyses import Analyses
from fedgrpc.controller.network import Network
from fedgrpc.controller.scope import (
    analysis_in_scope,
    caller_scope,
    in_scope,
    only_visible,
    project_in_scope,
    scoped,
)
from fedgrpc.controller.sessions import SessionManager
from fedgrpc.controller.tokens import TokenAuthority
from fedgrpc.errors import FailedPrecondition, NotFound, Unavailable
from fedgrpc.proto.control.v1 import control_pb2 as pb
from fedgrpc.security.identity import caller_claims
from fedgrpc.statestore import ListResult, NamedRepository, Record

T = TypeVar("T")


async def _db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


class ControlAPI:
    def __init__(
        self, network: Network, sessions: SessionManager, analyses: Analyses | None = None
    ) -> None:
        self.network = network
        self.store = network.store
        self.sessions = sessions
        self._analyses = analyses
        # The bound HOST:PORT (port 0 resolved), set by the app once the server listens.
        self.address: str | None = None

    # --- tokens ---------------------------------------------------------------------------

    def _authority(self) -> TokenAuthority:
        if self.network.authority is None:
            raise FailedPrecondition("this controller runs without authentication (auth=false)")
        return self.network.authority

    async def create_token(
        self, *, role: str, subject: str, expires_in: float | None, scope: str | None
    ) -> dict[str, Any]:
        token, claims = self._authority().create(
            role=role, subject=subject, scope=scope, expires_in=expires_in, creator=caller_claims()
        )
        return {
            "token": token,
            "token_id": claims.token_id,
            "subject": claims.subject,
            "role": claims.role.value,
            "scope": claims.scope or "",
            "expires_at": claims.expires_at or 0,
        }

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        claims = caller_claims()
        record = await self._authority().revoke(token_id, by=claims.subject if claims else "")
        return {"token_id": token_id, "revoked_at": record.get("revoked_at") or ""}

    async def controller_status(self) -> dict[str, Any]:
        active_model = await self._active_model_id() or ""
        session_id = self.sessions.active_session_id
        return {
            "state": "running" if session_id else "idle",
            "version": __version__,
            "active_session_id": session_id,
            "combiners_online": len(self.network.registry.links),
            "clients_online": self.network.registry.clients_online(),
            "active_model_id": active_model,
        }

    # --- models ---------------------------------------------------------------------------

    async def _active_model_id(self) -> str | None:
        try:
            return str((await _db(self.store.models.get_active))["id"])
        except NotFound:
            return None

    async def _with_active_flag(self, records: list[Record]) -> list[Record]:
        active = await self._active_model_id()
        return [{**record, "active": record["id"] == active} for record in records]

    async def get_model(self, model_id: str) -> Record:
        record = in_scope(await _db(self.store.models.get, model_id), "model")
        return (await self._with_active_flag([record]))[0]

    async def list_models(self, **args: Any) -> ListResult:
        found = await _db(self.store.models.list, **scoped(args))
        return {"count": found["count"], "result": await self._with_active_flag(found["result"])}

    async def get_active_model(self) -> Record:
        try:
            record = in_scope(await _db(self.store.models.get_active), "model")
        except NotFound:
            raise NotFound("no active model; upload a seed model and set it active") from None
        return {**record, "active": True}

    async def set_active_model(self, model_id: str) -> Record:
        await self.get_model(model_id)  # NotFound outside the caller's scope
        await _db(self.store.models.set_active, model_id)
        return await self.get_model(model_id)

    async def model_lineage(
        self, model_id: str, *, descendants: bool, limit: int, include_self: bool
    ) -> ListResult:
        await self.get_model(model_id)
        walk = self.store.models.descendants if descendants else self.store.models.ancestors
        found = only_visible(
            await _db(walk, model_id, limit=limit or None, include_self=include_self)
        )
        return {"count": len(found), "result": await self._with_active_flag(found)}

    # --- sessions -------------------------------------------------------------------------

    async def get_session(self, session_id: str) -> Record:
        return in_scope(await _db(self.store.sessions.get, session_id), "session")

    async def start_session(
        self, *, session_id: str | None, name: str | None, settings: dict[str, Any]
    ) -> Record:
        """A new session tagged with the caller's scope; its seed model must be in scope."""
        if settings.get("model_id"):
            await self.get_model(str(settings["model_id"]))
        elif caller_scope() is not None:
            await self.get_active_model()
        return await self.sessions.start(
            session_id=session_id, name=name, settings=settings, scope=caller_scope()
        )

    async def continue_session(
        self, session_id: str, *, rounds: int | None, round_timeout: float | None
    ) -> Record:
        await self.get_session(session_id)
        return await self.sessions.continue_session(
            session_id, rounds=rounds, round_timeout=round_timeout
        )

    async def stop_session(self, session_id: str) -> Record:
        await self.get_session(session_id)
        return await self.sessions.stop(session_id)

    async def list_sessions(self, **args: Any) -> ListResult:
        found: ListResult = await _db(self.store.sessions.list, **scoped(args))
        return found

    # --- compute packages -----------------------------------------------------------------

    async def upload_package(self, messages: AsyncIterator[pb.PackageChunk]) -> Record:
        return await packages.upload(self.network, messages)

    async def get_package(self, package_id: str) -> Record:
        return await _db(packages.get, self.store, package_id)

    async def get_active_package(self) -> Record:
        return await _db(packages.get_active, self.store)

    async def set_active_package(self, package_id: str) -> Record:
        return await _db(packages.set_active, self.store, package_id)

    async def list_packages(self, **args: Any) -> ListResult:
        return await _db(packages.list_packages, self.store, **args)

    def download_package(self, package_id: str) -> AsyncIterator[pb.PackageChunk]:
        return packages.download(self.network, package_id)

    async def client_config(self, *, checksum: bool) -> Record:
        return await _db(
            packages.client_config,
            self.store,
            controller=self.controller_address,
            checksum=checksum,
        )

    @property
    def controller_address(self) -> str:
        """HOST:PORT clients dial: the bound address when known, else the configured one."""
        config = self.network.config
        return self.address or f"{config.host}:{config.port}"

    # --- analyses (FLAME) -----------------------------------------------------------------

    @property
    def analyses(self) -> Analyses:
        if self._analyses is None:
            raise Unavailable("this controller does not run analyses")
        return self._analyses

    async def start_analysis(self, *, project_id: str, **request: Any) -> Record:
        """A new analysis; a scoped caller's runs under its scope as the project."""
        return await self.analyses.start_analysis(
            project_id=project_in_scope(project_id), **request
        )

    async def get_analysis(self, analysis_id: str) -> Record:
        return analysis_in_scope(await _db(self.store.analyses.get, analysis_id))

    async def list_analyses(self, **args: Any) -> ListResult:
        scope = caller_scope()
        if scope is not None:
            args = {**args, "project_id": scope}
        found: ListResult = await _db(self.store.analyses.list, **args)
        return found

    async def stop_analysis(self, analysis_id: str) -> Record:
        await self.get_analysis(analysis_id)  # NotFound outside the caller's scope
        return await self.analyses.stop_analysis(analysis_id)

    async def analysis_logs(self, analysis_id: str, node_id: str, log_type: str) -> list[Record]:
        await self.get_analysis(analysis_id)  # NotFound when unknown or outside the scope
        filters = {
            key: value for key, value in (("node_id", node_id), ("log_type", log_type)) if value
        }
        return await _db(self.store.analysis_logs.for_analysis, analysis_id, **filters)

    async def analysis_result(self, analysis_id: str) -> tuple[Record, bytes]:
        await self.get_analysis(analysis_id)
        return await _db(storage.result_of, self.store, self.network.models, analysis_id)

    # --- the rest: one get/list pair per record kind ------------------------------------

    async def get_named(self, repository: NamedRepository, id_or_name: str) -> Record:
        """Clients and combiners are looked up by id, then by name."""
        try:
            return await _db(repository.get, id_or_name)
        except NotFound:
            return await _db(repository.get_by_name, id_or_name)

    async def get(self, kind: str, record_id: str) -> Record:
        repository = getattr(self.store, kind)
        record: Record = await _db(repository.get, record_id)
        return record

    async def list(self, kind: str, **args: Any) -> ListResult:
        repository = getattr(self.store, kind)
        found: ListResult = await _db(repository.list, **args)
        return found
