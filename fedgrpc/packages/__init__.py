"""Compute packages: the code clients run, shipped as a checked tarball by the controller.

A package is a directory with ``fedgrpc.yaml`` at its root (schema in
:mod:`fedgrpc.packages.manifest`), turned into a reproducible ``.tar.gz`` by
:func:`build_package` (or ``fedgrpc package create DIR``). The controller refuses, on upload,
anything :func:`inspect_package` refuses (links, absolute or ``..`` paths, special files,
too many members, too many bytes once extracted, a missing or invalid manifest, entry points
naming files the package lacks: see :mod:`fedgrpc.packages.archive`); clients run the same
checks again before :func:`extract_package` writes anything. Requirements listed in the
manifest are recorded, never installed automatically: install them on the client yourself.
Command entry points (anything that is not ``module:function``) exchange models and results
through files, see :mod:`fedgrpc.packages.commands`.
"""

from fedgrpc.packages.archive import DEFAULT_LIMITS, PackageLimits, check_member, inspect_package
from fedgrpc.packages.build import build_package
from fedgrpc.packages.extract import extract_package
from fedgrpc.packages.manifest import (
    ANALYSIS_ENTRY,
    ENTRY_POINT_NAMES,
    MANIFEST_NAME,
    EntryPoint,
    Manifest,
    check_analysis_entry,
    check_references,
    parse_manifest,
    read_manifest,
)

__all__ = [
    "ANALYSIS_ENTRY",
    "DEFAULT_LIMITS",
    "ENTRY_POINT_NAMES",
    "MANIFEST_NAME",
    "EntryPoint",
    "Manifest",
    "PackageLimits",
    "build_package",
    "check_analysis_entry",
    "check_member",
    "check_references",
    "extract_package",
    "inspect_package",
    "parse_manifest",
    "read_manifest",
]
