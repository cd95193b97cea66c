"""Finding the user's code: ``module:object``, a package directory, or the controller's package."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from fedgrpc.config import ClientConfig
from fedgrpc.errors import FailedPrecondition, FedgrpcError, InvalidArgument
from fedgrpc.packages.commands import (
    Command,
    command_predict,
    command_startup,
    command_train,
    command_validate,
)
from fedgrpc.packages.fetch import default_cache_dir, fetch_package
from fedgrpc.packages.manifest import (
    ANALYSIS_ENTRY,
    MANIFEST_NAME,
    EntryPoint,
    check_analysis_entry,
    check_references,
    read_manifest,
)
from fedgrpc.security.tls import channel_credentials_for

log = logging.getLogger(__name__)

# Plain functions run in a worker thread; ``async def`` ones on the client's event loop.
TrainOutput = tuple[Any, Mapping[str, Any]]
TrainFn = Callable[[Any, Mapping[str, Any]], TrainOutput | Awaitable[TrainOutput]]
ValidateFn = Callable[[Any], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
StartupFn = Callable[[], Any]
PredictFn = Callable[[Any], Any]

PACKAGE_MANIFEST = MANIFEST_NAME


@dataclass(frozen=True, kw_only=True)
class EntryPoints:
    train: TrainFn | None
    validate: ValidateFn | None
    startup: StartupFn | None = None
    predict: PredictFn | None = None


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


def load_client_code(
    config: ClientConfig,
    *,
    entry: str | None = None,
    package: Path | None = None,
    from_controller: bool = False,
    package_dir: Path | None = None,
) -> EntryPoints:
    """What ``fedgrpc client start`` runs: ``--entry``, ``--package DIR`` or the controller's
    active package (downloaded, verified and extracted into ``package_dir``'s cache). A package
    goes through :func:`start_package` either way."""
    if entry is not None:
        return load_entry(entry)
    if from_controller:
        package = asyncio.run(
            fetch_package(
                config.controller,
                cache_dir=package_dir or default_cache_dir(),
                max_message_size=config.max_message_size,
                credentials=channel_credentials_for(config),
                token=config.token,
            )
        )
    if package is None:
        raise InvalidArgument("give an entry, a package directory, or from_controller")
    return start_package(package)


def start_package(directory: Path) -> EntryPoints:
    """Load a package directory and run its ``startup`` entry point once, if it has one."""
    entry_points = load_package(directory)
    if entry_points.startup is not None:
        log.info("running the package's startup entry point")
        try:
            entry_points.startup()
        except FedgrpcError:
            raise
        except Exception as exc:  # the user's code: report it in one line, as a refusal
            raise FailedPrecondition(
                f"the package's startup raised {type(exc).__name__}: {exc}"
            ) from exc
    return entry_points


def load_package(directory: Path) -> EntryPoints:
    """A package directory: the entry points its ``fedgrpc.yaml`` names, ready to call.

    Functions are imported from the package (its directory goes first on ``sys.path``);
    commands are wrapped as described in :mod:`fedgrpc.packages.commands`.
    """
    root = Path(directory).resolve()
    manifest = read_manifest(root)
    check_references(manifest, lambda path: (root / path).is_file())
    # The analysis entry point belongs to fedgrpc.flame.runner (see load_analysis_entry).
    entries = {n: e for n, e in manifest.entry_points.items() if n != ANALYSIS_ENTRY}
    if "train" not in entries and "validate" not in entries:
        raise InvalidArgument(f"{root / MANIFEST_NAME}: entry_points needs train or validate")
    if any(not entry.is_command for entry in entries.values()) and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    loaded = {name: _load_entry_point(entry, root) for name, entry in entries.items()}
    return EntryPoints(
        train=loaded.get("train"),
        validate=loaded.get("validate"),
        startup=loaded.get("startup"),
        predict=loaded.get("predict"),
    )


_COMMAND_WRAPPERS: dict[str, Callable[[Command], Callable[..., Any]]] = {
    "startup": command_startup,
    "train": command_train,
    "validate": command_validate,
    "predict": command_predict,
}


def load_analysis_entry(spec: str, package_dir: Path | None = None) -> Callable[[], Any]:
    """The function an analysis runs: ``module:function`` (``module`` alone means its
    ``main``), or with ``package_dir`` the package's entry point named ``spec`` (default
    ``analysis``), which must be a module:function."""
    if package_dir is None:
        module_name, _, attribute = spec.partition(":")
        target = _import(module_name, spec)
        for part in (attribute or "main").split("."):
            target = getattr(target, part, None)
        if not callable(target):
            raise InvalidArgument(f"analysis entry {spec!r} is not a function")
        return cast(Callable[[], Any], target)
    root = Path(package_dir).resolve()
    manifest = read_manifest(root)
    name = spec or ANALYSIS_ENTRY
    check_analysis_entry(manifest.specs(), name, package=f"in {root}")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return cast(Callable[[], Any], _load_entry_point(manifest.entry_points[name], root))


def _load_entry_point(entry: EntryPoint, root: Path) -> Callable[..., Any]:
    if entry.module is None or entry.function is None:
        return _COMMAND_WRAPPERS[entry.name](Command(entry, root))
    module = _import(entry.module, entry.spec)
    origin = Path(getattr(module, "__file__", None) or "").resolve()
    if not origin.is_relative_to(root):
        # A module of that name was imported already (or shadows the package's): running
        # someone else's code under the package's name would be a silent, nasty surprise.
        raise InvalidArgument(
            f"entry point {entry.name!r} ({entry.spec}): module {entry.module!r} resolves to "
            f"{origin}, not to the package in {root}; rename the package's module"
        )
    function = getattr(module, entry.function, None)
    if not callable(function):
        raise InvalidArgument(
            f"entry point {entry.name!r} ({entry.spec}): {entry.function!r} is not a function "
            f"in {entry.module}"
        )
    return cast(Callable[..., Any], function)


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
