"""Finding the user's train/validate functions: ``module:object`` or a package directory."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedgrpc.errors import InvalidArgument

TrainFn = Callable[[Any, Mapping[str, Any]], tuple[Any, Mapping[str, Any]]]
ValidateFn = Callable[[Any], Mapping[str, Any]]

PACKAGE_MANIFEST = "fedgrpc.yaml"


@dataclass(frozen=True, kw_only=True)
class EntryPoints:
    train: TrainFn | None
    validate: ValidateFn | None


def load_entry(spec: str) -> EntryPoints:
    """``module`` or ``module:object``: the target's ``train``/``validate`` attributes."""
    module_name, _, attribute = spec.partition(":")
    target = _import(module_name, spec)
    for part in filter(None, attribute.split(".")):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise InvalidArgument(
                f"entry {spec!r}: {module_name} has no attribute {part!r}"
            ) from None
    return _entry_points_of(target, spec)


def load_package(directory: Path) -> EntryPoints:
    """A directory whose ``fedgrpc.yaml`` names ``train``/``validate`` as module:function."""
    manifest_path = directory / PACKAGE_MANIFEST
    try:
        manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise InvalidArgument(f"cannot read {manifest_path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{manifest_path} is not valid YAML: {exc}") from None
    entries = manifest.get("entry_points") if isinstance(manifest, dict) else None
    if not isinstance(entries, dict) or "train" not in entries:
        raise InvalidArgument(f"{manifest_path} must have entry_points with at least 'train'")
    sys.path.insert(0, str(directory.resolve()))
    return EntryPoints(
        train=_function(str(entries["train"])),
        validate=_function(str(entries["validate"])) if "validate" in entries else None,
    )


def _function(spec: str) -> Callable[..., Any]:
    module_name, sep, name = spec.partition(":")
    if not sep:
        raise InvalidArgument(f"entry point {spec!r} must be module:function")
    function: Callable[..., Any] | None = getattr(_import(module_name, spec), name, None)
    if function is None or not callable(function):
        raise InvalidArgument(f"entry point {spec!r}: {name!r} is not a function in {module_name}")
    return function


def _import(module_name: str, spec: str) -> Any:
    if not module_name:
        raise InvalidArgument(f"entry {spec!r} must be module or module:object")
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgument(f"entry {spec!r}: cannot import {module_name}: {exc}") from None


def _entry_points_of(target: Any, spec: str) -> EntryPoints:
    train = getattr(target, "train", None)
    validate = getattr(target, "validate", None)
    if not callable(train) and not callable(validate):
        raise InvalidArgument(f"entry {spec!r} has neither a train nor a validate function")
    return EntryPoints(
        train=train if callable(train) else None,
        validate=validate if callable(validate) else None,
    )
