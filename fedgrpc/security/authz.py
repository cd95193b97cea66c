"""Who may call what: the one authorization table for every RPC fedgrpc serves.

The table is per server kind because ``ModelService`` is served by both the controller and
the combiners with the same method names but different audiences. Rows list the non-admin
roles; admin may call everything. Every method is spelled out (no wildcards) so a new RPC
without a row fails ``tests/security/test_authz_table.py`` instead of being silently open.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from fedgrpc.security.tokens import Role


class ServerKind(str, enum.Enum):
    """Which daemon an :class:`~fedgrpc.security.interceptor.AuthInterceptor` protects."""

    CONTROLLER = "controller"
    COMBINER = "combiner"


# Health checks and reflection are the only methods callable without a token: load balancers
# and `fedgrpc health` probe servers before they have credentials.
PUBLIC_SERVICES: frozenset[str] = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

# Services no daemon serves to the network, hence in no server kind's table and never behind a
# bearer token. NodeService is served by the client daemon on 127.0.0.1 only, to the analysis
# processes it spawned: analysis code holds no fedgrpc token, so each call instead carries its
# analysis' secret (handed to that process in its environment), and the servicer refuses every
# method without a known one (UNAUTHENTICATED) before it runs (fedgrpc/client/node_service.py).
LOCAL_SERVICES: frozenset[str] = frozenset({"fedgrpc.messaging.v1.NodeService"})

_CONTROL = "fedgrpc.control.v1.ControlService"
_NETWORK = "fedgrpc.network.v1.NetworkService"
_MODEL = "fedgrpc.model.v1.ModelService"
_COMBINER = "fedgrpc.combiner.v1.CombinerService"
_STORAGE = "fedgrpc.messaging.v1.StorageService"

_NOBODY: frozenset[Role] = frozenset()  # admin only
_USER = frozenset({Role.USER})
_CLIENT = frozenset({Role.CLIENT})
_COMBINER_ROLE = frozenset({Role.COMBINER})


def _rows(service: str, roles: frozenset[Role], *methods: str) -> dict[str, frozenset[Role]]:
    return {f"/{service}/{method}": roles for method in methods}


_CONTROLLER_TABLE: dict[str, frozenset[Role]] = {
    # Operators drive sessions, models, packages and read the records.
    **_rows(
        _CONTROL,
        _USER,
        "GetControllerStatus",
        "StartSession",
        "ContinueSession",
        "StopSession",
        "GetSession",
        "ListSessions",
        "GetModel",
        "ListModels",
        "GetActiveModel",
        "SetActiveModel",
        "GetModelAncestors",
        "GetModelDescendants",
        "GetClient",
        "ListClients",
        "GetCombiner",
        "ListCombiners",
        "GetRound",
        "ListRounds",
        "GetStatus",
        "ListStatuses",
        "GetValidation",
        "ListValidations",
        "UploadPackage",
        "SetActivePackage",
        "GetActivePackage",
        "GetPackage",
        "ListPackages",
        "StartAnalysis",
        "GetAnalysis",
        "ListAnalyses",
        "StopAnalysis",
        "GetAnalysisLogs",
        "DownloadAnalysisResult",
    ),
    # Clients fetch their configuration and the compute package they run.
    **_rows(_CONTROL, _USER | _CLIENT, "GetClientConfig", "DownloadPackage"),
    # Only admins hand out and revoke tokens.
    **_rows(_CONTROL, _NOBODY, "CreateToken", "RevokeToken"),
    **_rows(_NETWORK, _COMBINER_ROLE, "CombinerLink"),
    **_rows(_NETWORK, _CLIENT, "AssignCombiner"),
    # Users upload seed models and download results; combiners fetch globals, send partials.
    **_rows(_MODEL, _USER | _COMBINER_ROLE, "Upload", "Download"),
    # Analysis nodes keep global intermediate data and submit final results; the servicer
    # checks that the caller is a node of that analysis (and its aggregator for results).
    **_rows(_STORAGE, _CLIENT, "PutObject", "GetObject", "ListObjects", "SubmitResult"),
}

_COMBINER_TABLE: dict[str, frozenset[Role]] = {
    **_rows(_COMBINER, _CLIENT, "Connect"),
    # Clients download the global model from their combiner and upload their updates.
    **_rows(_MODEL, _CLIENT, "Upload", "Download"),
}

AUTHORIZATION: Mapping[ServerKind, Mapping[str, frozenset[Role]]] = MappingProxyType(
    {
        ServerKind.CONTROLLER: MappingProxyType(_CONTROLLER_TABLE),
        ServerKind.COMBINER: MappingProxyType(_COMBINER_TABLE),
    }
)


def is_public(method: str) -> bool:
    """Whether ``method`` (``/package.Service/Method``) may be called without a token."""
    return method.lstrip("/").partition("/")[0] in PUBLIC_SERVICES


def allowed_roles(server: ServerKind, method: str) -> frozenset[Role]:
    """The roles that may call ``method`` on ``server``; admin is always among them.

    A method without a row is admin-only: forgetting a row fails closed.
    """
    return AUTHORIZATION[server].get(method, _NOBODY) | {Role.ADMIN}


def is_local(method: str) -> bool:
    """Whether ``method`` belongs to a node-local service (authenticated by its own secret)."""
    return method.lstrip("/").partition("/")[0] in LOCAL_SERVICES


def is_allowed(server: ServerKind, method: str, role: Role) -> bool:
    return role in allowed_roles(server, method)


def methods(server: ServerKind) -> Iterable[str]:
    """Every method with a row for ``server`` (for tests and documentation)."""
    return AUTHORIZATION[server].keys()
