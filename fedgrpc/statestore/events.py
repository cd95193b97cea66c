"""Append-only records of what happened: status events, validations and metrics."""

from __future__ import annotations

import math
from typing import Any

from fedgrpc.errors import InvalidArgument

from .base import CollectionSpec, Record
from .repositories import Repository, optional_text, require_text


class StatusRepository(Repository):
    """Status events (FEDn's "statuses"): who reported what, at which level, in which session."""

    spec = CollectionSpec(
        name="statuses",
        noun="status event",
        filter_keys=(
            "session_id",
            "event_type",
            "sender_name",
            "sender_role",
            "log_level",
            "status",
            "round_id",
            "correlation_id",
        ),
        sort_keys=("event_type", "sender_name", "log_level"),
    )

    def add(
        self,
        *,
        event_type: str,
        sender_name: str,
        sender_role: str,
        session_id: str | None = None,
        status: str | None = None,
        log_level: str = "INFO",
        message: str = "",
        data: Any = None,
        correlation_id: str | None = None,
        round_id: str | None = None,
    ) -> Record:
        for field, value in (
            ("event_type", event_type),
            ("sender_name", sender_name),
            ("sender_role", sender_role),
            ("log_level", log_level),
        ):
            require_text(value, field, "status event")
        if not isinstance(message, str):
            raise InvalidArgument(f"status event message must be a string, got {message!r}")
        return self._collection.insert(
            {
                "event_type": event_type,
                "sender_name": sender_name,
                "sender_role": sender_role,
                "session_id": session_id,
                "status": status,
                "log_level": log_level,
                "message": message,
                "data": data,
                "correlation_id": correlation_id,
                "round_id": round_id,
            }
        )


class ValidationRepository(Repository):
    """Metrics a client reported after validating a model."""

    spec = CollectionSpec(
        name="validations",
        noun="validation",
        filter_keys=(
            "session_id",
            "model_id",
            "correlation_id",
            "sender_name",
            "sender_role",
            "receiver_name",
            "receiver_role",
            "round_id",
        ),
        sort_keys=("sender_name", "receiver_name"),
    )

    def add(
        self,
        *,
        model_id: str,
        session_id: str,
        correlation_id: str,
        sender_name: str,
        sender_role: str,
        receiver_name: str,
        receiver_role: str,
        metrics: dict[str, Any],
        round_id: str | None = None,
    ) -> Record:
        required = {
            "model_id": model_id,
            "session_id": session_id,
            "correlation_id": correlation_id,
            "sender_name": sender_name,
            "sender_role": sender_role,
            "receiver_name": receiver_name,
            "receiver_role": receiver_role,
        }
        for field, value in required.items():
            require_text(value, field, "validation")
        if not isinstance(metrics, dict):
            raise InvalidArgument(
                f"validation metrics must be a dict, got {type(metrics).__name__}"
            )
        return self._collection.insert({**required, "metrics": metrics, "round_id": round_id})


class MetricRepository(Repository):
    """Single named numbers (loss, accuracy, ...) reported during training."""

    spec = CollectionSpec(
        name="metrics",
        noun="metric",
        filter_keys=("key", "model_id", "session_id", "round_id", "sender_name", "sender_role"),
        sort_keys=("key", "step", "value"),
    )

    def add(
        self,
        *,
        key: str,
        value: float,
        model_id: str | None = None,
        session_id: str | None = None,
        round_id: str | None = None,
        step: int | None = None,
        sender_name: str | None = None,
        sender_role: str | None = None,
    ) -> Record:
        require_text(key, "key", "metric")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
            raise InvalidArgument(f"metric step must be an integer, got {step!r}")
        optional_text(sender_name, "sender_name", "metric")
        return self._collection.insert(
            {
                "key": key,
                "value": _finite_number(value),
                "model_id": model_id,
                "session_id": session_id,
                "round_id": round_id,
                "step": step,
                "sender_name": sender_name,
                "sender_role": sender_role,
            }
        )


def _finite_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"metric value must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidArgument(f"metric value must be finite, got {value!r}")
    return float(value)
