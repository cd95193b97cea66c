"""A running controller: statestore, model store, network, sessions and the three services."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pymongo

from fedgrpc.config import ControllerConfig
from fedgrpc.controller.analyses import Analyses
from fedgrpc.controller.api import ControlAPI
from fedgrpc.controller.broker import Broker
from fedgrpc.controller.control_service import ControlServicer
from fedgrpc.controller.model_service import ControllerModelServicer
from fedgrpc.controller.network import Network
from fedgrpc.controller.network_service import NetworkServicer
from fedgrpc.controller.registry import CombinerRegistry
from fedgrpc.controller.sessions import SessionManager
from fedgrpc.controller.storage_service import StorageServicer
from fedgrpc.controller.tokens import TokenAuthority
from fedgrpc.controller.writer import StateWriter
from fedgrpc.errors import Unavailable
from fedgrpc.modelstore import ModelStore, create_model_store
from fedgrpc.proto.control.v1 import control_pb2, control_pb2_grpc
from fedgrpc.proto.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from fedgrpc.proto.model.v1 import model_pb2
from fedgrpc.proto.network.v1 import network_pb2, network_pb2_grpc
from fedgrpc.rpc.server import (
    RunningServer,
    Service,
    service_name,
    start_server,
    warn_if_plaintext,
)
from fedgrpc.security.authz import ServerKind
from fedgrpc.security.interceptor import AuthInterceptor
from fedgrpc.security.tls import server_credentials_for
from fedgrpc.statestore import StateStore, open_mongo_statestore, open_statestore
from fedgrpc.transfer import add_model_service

log = logging.getLogger(__name__)


def open_stores(config: ControllerConfig) -> tuple[StateStore, ModelStore, Any]:
    """The statestore and model store: both on MongoDB (GridFS) or both embedded (small
    models in the statestore's SQLite file, larger ones in ``data_dir/models``)."""
    if config.mongo_uri:
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(
            config.mongo_uri, serverSelectionTimeoutMS=10_000, tz_aware=True
        )
        database = client[config.mongo_database]
        store = open_mongo_statestore(database)
        try:
            store.ping()
        except Unavailable:
            client.close()
            raise
        return store, create_model_store(database=database, max_size=config.max_model_size), client
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_statestore(data_dir=config.data_dir)
    models = create_model_store(
        data_dir=config.data_dir, max_size=config.max_model_size, sqlite=store.sqlite_backend
    )
    return store, models, None


class Controller:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.server: RunningServer | None = None
        self.sessions: SessionManager | None = None
        # Where the admin token was written (None when auth is off).
        self.admin_token_path: Path | None = None

    async def start(self) -> None:
        config = self.config
        self.store, self.models, self._mongo = await asyncio.to_thread(open_stores, config)
        self.writer = StateWriter()
        self.writer.start()
        network = Network(
            config=config,
            store=self.store,
            models=self.models,
            registry=CombinerRegistry(),
            writer=self.writer,
        )
        await asyncio.to_thread(_mark_everything_offline, self.store)
        self.network = network
        self.model_service = ControllerModelServicer(network)
        interceptors: list[AuthInterceptor] = []
        if config.auth:
            authority = await TokenAuthority.open(config.data_dir, self.store, network.registry)
            network.authority = authority
            interceptors.append(AuthInterceptor(authority.verifier, ServerKind.CONTROLLER))
            self.admin_token_path = authority.admin_token_path
            log.info("admin token: %s", authority.admin_token_path)
        else:
            log.warning("authentication is OFF: anyone who reaches this controller may call it")
        self.sessions = SessionManager(network)
        self.broker = Broker(config=config, store=self.store, registry=network.registry)
        self.analyses = Analyses(
            config=config, store=self.store, registry=network.registry, broker=self.broker
        )
        network.broker, network.analyses = self.broker, self.analyses
        await self.broker.start()
        await self.analyses.start()
        self.api = ControlAPI(network, self.sessions, self.analyses)
        services = [
            Service(
                servicer=ControlServicer(self.api),
                add_to_server=control_pb2_grpc.add_ControlServiceServicer_to_server,
                name=service_name(control_pb2, "ControlService"),
            ),
            Service(
                servicer=NetworkServicer(network),
                add_to_server=network_pb2_grpc.add_NetworkServiceServicer_to_server,
                name=service_name(network_pb2, "NetworkService"),
            ),
            Service(
                servicer=self.model_service,
                add_to_server=add_model_service,
                name=service_name(model_pb2, "ModelService"),
            ),
            Service(
                servicer=StorageServicer(self.store, self.models),
                add_to_server=messaging_pb2_grpc.add_StorageServiceServicer_to_server,
                name=service_name(messaging_pb2, "StorageService"),
            ),
        ]
        warn_if_plaintext(config.host, config.serves_tls)
        self.server = await start_server(
            host=config.host,
            port=config.port,
            services=services,
            max_message_size=config.max_message_size,
            interceptors=interceptors,
            credentials=server_credentials_for(config),
        )
        self.api.address = self.server.address  # what GetClientConfig tells clients to dial
        await self.sessions.resume_interrupted()

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address

    async def stop(self, grace: float = 5.0) -> None:
        if self.sessions is not None:
            await self.sessions.shutdown()
            await self.analyses.stop()
            await self.broker.stop()
        if self.server is not None:
            await self.server.stop(grace)
        await self.writer.stop()
        await asyncio.to_thread(self._close_stores)

    def _close_stores(self) -> None:
        self.models.close()
        self.store.close()
        if self._mongo is not None:
            self._mongo.close()


def _mark_everything_offline(store: StateStore) -> None:
    """At start-up nobody is linked yet; records say online only once a link says so."""
    store.combiners.collection.update_many({"status": "online"}, {"status": "offline"})
    store.clients.collection.update_many({"status": "online"}, {"status": "offline"})
