"""The public surface: what ``import fedgrpc`` offers and what ``fedgrpc.APIClient`` can do.

Changing either list is a change to the public API: make it on purpose, here.
"""

from __future__ import annotations

import inspect

import fedgrpc
import fedgrpc.api

FEDGRPC_NAMES = ["APIClient", "Client", "__version__"]

API_CLIENT_METHODS = [
    "close",
    "continue_session",
    "create_token",
    "download_analysis_result",
    "download_model",
    "download_package",
    "get_active_clients",
    "get_active_model",
    "get_active_package",
    "get_analysis",
    "get_analysis_logs",
    "get_analysis_result_info",
    "get_client",
    "get_client_config",
    "get_clients",
    "get_clients_count",
    "get_combiner",
    "get_combiners",
    "get_combiners_count",
    "get_controller_status",
    "get_model",
    "get_model_ancestors",
    "get_model_descendants",
    "get_model_trail",
    "get_models",
    "get_models_count",
    "get_package",
    "get_package_checksum",
    "get_packages",
    "get_packages_count",
    "get_round",
    "get_rounds",
    "get_rounds_count",
    "get_session",
    "get_session_status",
    "get_sessions",
    "get_sessions_count",
    "get_status",
    "get_statuses",
    "get_statuses_count",
    "get_validation",
    "get_validations",
    "get_validations_count",
    "list_analyses",
    "revoke_token",
    "session_is_finished",
    "set_active_model",
    "set_active_package",
    "start_analysis",
    "start_session",
    "stop_analysis",
    "stop_session",
    "wait_for_analysis",
    "wait_for_session",
]


def test_fedgrpc_exports() -> None:
    assert sorted(fedgrpc.__all__) == FEDGRPC_NAMES
    for name in FEDGRPC_NAMES:
        assert hasattr(fedgrpc, name), name


def test_api_client_is_the_same_class_everywhere() -> None:
    # Looked up dynamically so this file type-checks before and after the export exists.
    assert vars(fedgrpc).get("APIClient") is fedgrpc.api.APIClient
    assert sorted(fedgrpc.api.__all__) == ["APIClient", "ControlClientBase"]


def test_api_client_public_methods() -> None:
    methods = sorted(
        name
        for name, _ in inspect.getmembers(fedgrpc.api.APIClient, inspect.isfunction)
        if not name.startswith("_")
    )
    assert methods == API_CLIENT_METHODS
