"""Aggregators by name: the built-ins plus plugins from the ``fedgrpc.aggregators`` group.

A third-party package registers an :class:`Aggregator` subclass in its packaging metadata::

    [project.entry-points."fedgrpc.aggregators"]
    medianish = "mypkg:MyAgg"

Entry points are looked up on every call (a session is created rarely), so a package installed
while a daemon runs is picked up without a restart. Built-in names cannot be overridden.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from fedgrpc.aggregators.base import Aggregator
from fedgrpc.aggregators.fedavg import FedAvg
from fedgrpc.aggregators.fedopt import FedAdagrad, FedAdam, FedYogi
from fedgrpc.errors import InvalidArgument

ENTRY_POINT_GROUP = "fedgrpc.aggregators"

_BUILTINS: Mapping[str, type[Aggregator]] = {
    cls.name: cls for cls in (FedAvg, FedAdam, FedYogi, FedAdagrad)
}

_log = logging.getLogger(__name__)


def available_aggregators() -> list[str]:
    """Built-in and registered aggregator names, sorted."""
    return sorted(set(_BUILTINS) | {entry.name for entry in _plugin_entry_points()})


def get_aggregator(name: str, kwargs: Mapping[str, Any] | None = None) -> Aggregator:
    """An aggregator instance; InvalidArgument for an unknown name, a broken plugin or bad
    parameters."""
    cls = _BUILTINS.get(name) or _load_plugin(name)
    params = dict(kwargs or {})
    if bad_keys := [key for key in params if not isinstance(key, str)]:
        raise InvalidArgument(f"aggregator {name!r}: parameter names must be strings: {bad_keys}")
    return cls(**params)


def _plugin_entry_points() -> list[EntryPoint]:
    plugins = list(entry_points(group=ENTRY_POINT_GROUP))
    for entry in plugins:
        if entry.name in _BUILTINS:
            _log.warning(
                "entry point %r (%s) is ignored: %r is a built-in aggregator",
                entry.name,
                entry.value,
                entry.name,
            )
    return [entry for entry in plugins if entry.name not in _BUILTINS]


def _load_plugin(name: str) -> type[Aggregator]:
    matches = [entry for entry in _plugin_entry_points() if entry.name == name]
    if not matches:
        raise InvalidArgument(
            f"unknown aggregator {name!r}; available: {', '.join(available_aggregators())}"
        )
    if len({entry.value for entry in matches}) > 1:
        targets = ", ".join(sorted(entry.value for entry in matches))
        raise InvalidArgument(
            f"aggregator entry point {name!r} is registered more than once: {targets}"
        )
    return _checked_plugin(matches[0])


def _checked_plugin(entry: EntryPoint) -> type[Aggregator]:
    try:
        loaded = entry.load()
    except Exception as exc:  # a plugin can fail in any way; report it, do not crash the caller
        raise InvalidArgument(
            f"aggregator entry point {entry.name!r} ({entry.value}) failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not (inspect.isclass(loaded) and issubclass(loaded, Aggregator)):
        reason = f"is not an Aggregator subclass (it is {loaded!r})"
    elif inspect.isabstract(loaded):
        reason = "is abstract: " + ", ".join(sorted(loaded.__abstractmethods__)) + " missing"
    elif not isinstance(getattr(loaded, "name", None), str):
        reason = "does not set the class attribute name: str"
    else:
        return loaded
    raise InvalidArgument(f"aggregator entry point {entry.name!r} ({entry.value}) {reason}")
