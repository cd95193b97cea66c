"""Code written for FEDn's APIClient runs unchanged: same names, parameters and defaults.

The table is FEDn's documented ``fedn.network.api.client.APIClient``. Each of its methods must
exist here with its parameters in the same order and with the same defaults; anything added
comes after them and has a default, so no FEDn call can break.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from fedgrpc.api import APIClient

REQUIRED = inspect.Parameter.empty

FEDN_SIGNATURES: dict[str, list[tuple[str, Any]]] = {
    "__init__": [
        ("host", REQUIRED),
        ("port", None),
        ("secure", False),
        ("verify", False),
        ("token", None),
        ("auth_scheme", None),
    ],
    "download_model": [("id", REQUIRED), ("path", REQUIRED)],
    "download_package": [("path", REQUIRED)],
    "get_active_clients": [("combiner_id", None), ("n_max", None)],
    "get_active_model": [],
    "get_active_package": [],
    "get_client": [("id", REQUIRED)],
    "get_client_config": [("checksum", True)],
    "get_clients": [("n_max", None)],
    "get_clients_count": [],
    "get_combiner": [("id", REQUIRED)],
    "get_combiners": [("n_max", None)],
    "get_combiners_count": [],
    "get_controller_status": [],
    "get_model": [("id", REQUIRED)],
    "get_model_trail": [("id", None), ("include_self", True), ("reverse", True), ("n_max", None)],
    "get_models": [("session_id", None), ("n_max", None)],
    "get_models_count": [],
    "get_package": [("id", REQUIRED)],
    "get_package_checksum": [],
    "get_packages": [("n_max", None)],
    "get_packages_count": [],
    "get_round": [("id", REQUIRED)],
    "get_rounds": [("n_max", None)],
    "get_rounds_count": [],
    "get_session": [("id", REQUIRED)],
    "get_session_status": [("id", REQUIRED)],
    "get_sessions": [("n_max", None)],
    "get_sessions_count": [],
    "get_status": [("id", REQUIRED)],
    "get_statuses": [
        ("session_id", None),
        ("event_type", None),
        ("sender_name", None),
        ("sender_role", None),
        ("n_max", None),
    ],
    "get_statuses_count": [],
    "get_validation": [("id", REQUIRED)],
    "get_validations": [
        ("session_id", None),
        ("model_id", None),
        ("correlation_id", None),
        ("sender_name", None),
        ("sender_role", None),
        ("receiver_name", None),
        ("receiver_role", None),
        ("n_max", None),
    ],
    "get_validations_count": [],
    "session_is_finished": [("id", REQUIRED)],
    "set_active_model": [("path", REQUIRED)],
    "set_active_package": [
        ("path", REQUIRED),
        ("helper", REQUIRED),
        ("name", None),
        ("description", None),
    ],
    "start_session": [
        ("id", None),
        ("aggregator", "fedavg"),
        ("aggregator_kwargs", None),
        ("model_id", None),
        ("round_timeout", 180),
        ("rounds", 5),
        ("round_buffer_size", -1),
        ("delete_models", True),
        ("validate", True),
        ("helper", "numpyhelper"),
        ("min_clients", 1),
        ("requested_clients", 8),
    ],
}


@pytest.mark.parametrize("name", sorted(FEDN_SIGNATURES))
def test_fedn_method_has_fedns_signature(name: str) -> None:
    parameters = list(inspect.signature(getattr(APIClient, name)).parameters.values())[1:]
    fedn = FEDN_SIGNATURES[name]
    ours = [(p.name, p.default) for p in parameters[: len(fedn)]]
    assert ours == fedn
    for leading in parameters[: len(fedn)]:
        assert leading.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, leading.name
    for extra in parameters[len(fedn) :]:
        assert extra.default is not REQUIRED, (
            f"{name}: added parameter {extra.name} needs a default"
        )
