"""``fedgrpc.yaml``: the manifest at the root of every compute package.

Schema (unknown top-level keys are refused, so a typo never silently drops a setting)::

    name: digits                     # optional, 1-128 characters
    entry_points:                    # required; keys among startup, train, validate, predict,
      startup: client:startup        #   analysis; module:function, the module a file in the package
      train: client:train
      validate: python validate.py   # anything else is a command (see fedgrpc.packages.commands)
      analysis: analysis:main        # a FLAME analysis: module:function only (fedgrpc.flame.runner)
    requirements:                    # optional pip requirement strings: recorded, NOT installed
      - scikit-learn>=1.4

An entry point is a function when it matches ``module.path:function`` exactly; a string with a
space, or any other shape, is a command. Either must name files that are in the package: a
function's module is ``module/path.py`` or ``module/path/__init__.py``; a command's script
tokens (``./anything`` or a relative path ending in a script suffix such as ``.py``/``.sh``)
must be files in the package, and may not be absolute or climb out with ``..``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from fedgrpc.errors import InvalidArgument

MANIFEST_NAME = "fedgrpc.yaml"
# "analysis": a FLAME analysis (module:function), run by fedgrpc.flame.runner, not by training.
ANALYSIS_ENTRY = "analysis"
ENTRY_POINT_NAMES = ("startup", "train", "validate", "predict", ANALYSIS_ENTRY)
MAX_MANIFEST_SIZE = 64 * 1024  # a manifest is a few lines; a large one is a mistake or an attack

_KNOWN_KEYS = ("name", "entry_points", "requirements")
_MAX_NAME = 128
_MAX_ENTRY = 4096
_MAX_REQUIREMENT = 512
_FUNCTION = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_SCRIPT_SUFFIXES = (".py", ".sh", ".bash", ".r", ".jl", ".pl", ".rb", ".js")


@dataclass(frozen=True, kw_only=True)
class EntryPoint:
    """One entry point: either ``module``/``function`` or a command's ``argv``."""

    name: str
    spec: str
    module: str | None = None
    function: str | None = None
    argv: tuple[str, ...] = ()

    @property
    def is_command(self) -> bool:
        return self.module is None

    def file_alternatives(self) -> list[tuple[str, ...]]:
        """Files this entry point needs, each as a tuple of acceptable alternatives."""
        if self.module is not None:
            base = self.module.replace(".", "/")
            return [(f"{base}.py", f"{base}/__init__.py")]
        return [(_script_path(self, token),) for token in self.argv if _is_script(token)]


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A validated ``fedgrpc.yaml``."""

    name: str | None
    entry_points: Mapping[str, EntryPoint]
    requirements: tuple[str, ...] = ()

    def specs(self) -> dict[str, str]:
        """Entry point name -> its string as written (what the Package record shows)."""
        return {name: entry.spec for name, entry in self.entry_points.items()}


def parse_manifest(text: str | bytes, *, source: str = MANIFEST_NAME) -> Manifest:
    """Validate a manifest's text; InvalidArgument naming ``source`` and the problem."""
    if len(text) > MAX_MANIFEST_SIZE:
        raise InvalidArgument(f"{source} is larger than {MAX_MANIFEST_SIZE} bytes")
    document = _load_yaml(text, source)
    if not isinstance(document, dict):
        raise InvalidArgument(f"{source} must be a mapping with at least 'entry_points'")
    unknown = sorted(str(key) for key in document if key not in _KNOWN_KEYS)
    if unknown:
        raise InvalidArgument(
            f"{source}: unknown key {unknown[0]!r}; known keys: {', '.join(_KNOWN_KEYS)}"
        )
    return Manifest(
        name=_name(document.get("name"), source),
        entry_points=_entry_points(document.get("entry_points"), source),
        requirements=_requirements(document.get("requirements"), source),
    )


def check_references(manifest: Manifest, has_file: Callable[[str], bool]) -> None:
    """InvalidArgument unless every file an entry point names is in the package."""
    for entry in manifest.entry_points.values():
        for alternatives in entry.file_alternatives():
            if not any(has_file(path) for path in alternatives):
                wanted = " or ".join(alternatives)
                raise InvalidArgument(
                    f"entry point {entry.name!r} ({entry.spec}) needs {wanted}, "
                    f"which is not in the package"
                )


def check_analysis_entry(specs: Mapping[str, str], name: str, *, package: str) -> str:
    """The ``module:function`` of entry point ``name`` (default ``analysis``) that an analysis
    runs from a package with these entry points (name -> spec as written); InvalidArgument
    naming ``package`` otherwise.

    One check for both sides: the controller runs it on the package record at StartAnalysis,
    so a wrong name fails the call instead of an analysis on every node, and the node's runner
    runs it on the extracted manifest before importing anything.
    """
    name = name or ANALYSIS_ENTRY
    spec = specs.get(name)
    if spec is None:
        known = ", ".join(sorted(specs)) or "none"
        hint = (
            "; with a package, give the name of one of its entry points, not module:function"
            if ":" in name
            else f"; add '{name}: module:function' to its {MANIFEST_NAME}"
        )
        raise InvalidArgument(
            f"package {package} has no entry point {name!r} (it has: {known}){hint}"
        )
    if not _FUNCTION.fullmatch(spec):
        raise InvalidArgument(
            f"package {package}: entry point {name!r} ({spec}) is a command; an analysis "
            f"runs a module:function"
        )
    return spec


def _load_yaml(text: str | bytes, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # PyYAML's messages span lines; the CLI and gRPC statuses want one.
        raise InvalidArgument(f"{source} is not valid YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"{source} is not UTF-8 text") from None


def _name(value: object, source: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value.strip()) <= _MAX_NAME:
        raise InvalidArgument(f"{source}: name must be text of 1 to {_MAX_NAME} characters")
    return value.strip()


def _entry_points(value: object, source: str) -> dict[str, EntryPoint]:
    if not isinstance(value, dict) or not value:
        raise InvalidArgument(
            f"{source}: entry_points must map some of {', '.join(ENTRY_POINT_NAMES)} "
            f"to module:function or a command"
        )
    entries = {}
    for name, spec in value.items():
        if name not in ENTRY_POINT_NAMES:
            raise InvalidArgument(
                f"{source}: unknown entry point {name!r}; known: {', '.join(ENTRY_POINT_NAMES)}"
            )
        if not isinstance(spec, str) or not 0 < len(spec.strip()) <= _MAX_ENTRY:
            raise InvalidArgument(f"{source}: entry point {name!r} must be a non-empty string")
        entries[name] = _entry_point(name, spec.strip(), source)
    return entries


def _entry_point(name: str, spec: str, source: str) -> EntryPoint:
    if _FUNCTION.fullmatch(spec):
        module, _, function = spec.partition(":")
        return EntryPoint(name=name, spec=spec, module=module, function=function)
    try:
        argv = tuple(shlex.split(spec))
    except ValueError as exc:
        raise InvalidArgument(f"{source}: entry point {name!r} ({spec}): {exc}") from None
    if not argv:
        raise InvalidArgument(f"{source}: entry point {name!r} is an empty command")
    entry = EntryPoint(name=name, spec=spec, argv=argv)
    for token in argv:
        if _is_script(token):
            _script_path(entry, token)  # refuses absolute paths and '..' now, not at run time
    return entry


def _requirements(value: object, source: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(item, str) and 0 < len(item.strip()) <= _MAX_REQUIREMENT and "\n" not in item
        for item in value
    ):
        raise InvalidArgument(f"{source}: requirements must be a list of pip requirement strings")
    return tuple(item.strip() for item in value)


def _is_script(token: str) -> bool:
    if token.startswith("-") or " " in token:  # an option, or an inline script for `sh -c`
        return False
    return token.startswith("./") or token.lower().endswith(_SCRIPT_SUFFIXES)


def _script_path(entry: EntryPoint, token: str) -> str:
    """The package-relative path a script token names; refuses anything outside the package."""
    path = PurePosixPath(token)
    if path.is_absolute() or ".." in path.parts or "\\" in token:
        raise InvalidArgument(
            f"entry point {entry.name!r} ({entry.spec}) names {token!r}, outside the package; "
            f"use a path relative to the package root"
        )
    return str(path)


def read_manifest(directory: Path) -> Manifest:
    """The validated manifest of a package directory (``--package DIR``)."""
    path = Path(directory) / MANIFEST_NAME
    try:
        with path.open("rb") as manifest_file:
            text = manifest_file.read(MAX_MANIFEST_SIZE + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_manifest(text, source=str(path))
