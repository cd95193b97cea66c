"""Data sources declared in a node's configuration, and FLAME's data-source SDK calls.

A node lists its sources under ``data_sources``::

    - {id: cohort, type: csv, path: /data/cohort}          # a directory (csv: *.csv/*.tsv only)
    - {id: fhir1, type: fhir, url: "https://h/fhir", token_env: FHIR_TOKEN, headers: {...}}
    - {id: bucket1, type: s3, bucket: b, prefix: "", endpoint_url: "http://minio:9000",
       access_key_env: S3_KEY, secret_key_env: S3_SECRET, region: us-east-1}

Secrets never sit in the configuration: it names environment variables, read when a client is
made, so a missing one is reported then, by name. Analyses see ids, types and locations only.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast, get_args

from fedgrpc.errors import ConfigError
from fedgrpc.flame.dataclients import (
    DataClient,
    DataSourceError,
    FhirClient,
    FilesClient,
    S3Client,
)

__all__ = [
    "DataSource",
    "DataSourceError",
    "DataSourceSet",
    "FhirClient",
    "FilesClient",
    "S3Client",
    "describe_data_sources",
    "parse_data_sources",
]

log = logging.getLogger(__name__)

SourceType = Literal["csv", "files", "fhir", "s3"]
_TYPES: tuple[str, ...] = get_args(SourceType)
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@:-]{0,127}")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYS: dict[str, set[str]] = {
    "csv": {"path"},
    "files": {"path"},
    "fhir": {"url", "token_env", "headers", "timeout"},
    "s3": {
        "bucket",
        "prefix",
        "endpoint_url",
        "access_key_env",
        "secret_key_env",
        "region",
        "timeout",
    },
}
_SECRET_HINTS = {"token", "password", "secret", "secret_key", "access_key", "key"}


@dataclass(frozen=True, kw_only=True)
class DataSource:
    id: str
    type: SourceType
    path: Path | None = None  # csv, files
    url: str | None = None  # fhir: base URL
    token_env: str | None = None  # fhir: env var holding a bearer token
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    bucket: str | None = None  # s3
    prefix: str = ""
    endpoint_url: str | None = None  # s3: None means AWS itself
    access_key_env: str | None = None
    secret_key_env: str | None = None
    region: str | None = None
    timeout: float = 30.0


# --- configuration -------------------------------------------------------------------------------
def _str(entry: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}.{key}", "is required")
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}", f"must be a non-empty string, got {value!r}")
    return value


def _env_name(entry: Mapping[str, Any], key: str, where: str) -> str | None:
    name = _str(entry, key, where)
    if name is not None and not _ENV.fullmatch(name):
        raise ConfigError(f"{where}.{key}", f"{name!r} is not an environment variable name")
    return name


def _http_url(entry: Mapping[str, Any], key: str, where: str, *, required: bool) -> str | None:
    url = _str(entry, key, where, required=required)
    if url is not None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"{where}.{key}", f"must be an http(s) URL, got {url!r}")
    return url


def _parse_one(entry: Any, index: int) -> DataSource:
    where = f"data_sources[{index}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(where, f"must be a mapping with id and type, got {type(entry).__name__}")
    source_id = entry.get("id")
    if not isinstance(source_id, str) or not _ID.fullmatch(source_id):
        raise ConfigError(
            f"{where}.id", f"must be a short name ([A-Za-z0-9._@:-]), got {source_id!r}"
        )
    where = f"data_sources[{index}] ({source_id})"
    kind = entry.get("type")
    if kind not in _TYPES:
        raise ConfigError(f"{where}.type", f"must be one of {', '.join(_TYPES)}, got {kind!r}")
    for key in set(entry) - _KEYS[kind] - {"id", "type"}:
        hint = (
            " (name an environment variable instead, e.g. token_env)"
            if str(key).lower() in _SECRET_HINTS
            else ""
        )
        raise ConfigError(f"{where}.{key}", f"is not a setting of a {kind} source{hint}")
    common: dict[str, Any] = {"id": source_id, "type": cast(SourceType, kind)}
    timeout = entry.get("timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(f"{where}.timeout", f"must be a number of seconds > 0, got {timeout!r}")
    if kind in ("csv", "files"):
        return DataSource(**common, path=Path(cast(str, _str(entry, "path", where, required=True))))
    if kind == "fhir":
        headers = entry.get("headers") or {}
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ConfigError(f"{where}.headers", "must map header names to string values")
        return DataSource(
            **common,
            url=_http_url(entry, "url", where, required=True),
            token_env=_env_name(entry, "token_env", where),
            headers=MappingProxyType(dict(headers)),
            timeout=float(timeout),
        )
    access, secret = (
        _env_name(entry, "access_key_env", where),
        _env_name(entry, "secret_key_env", where),
    )
    if (access is None) != (secret is None):
        raise ConfigError(where, "give both access_key_env and secret_key_env, or neither")
    prefix = entry.get("prefix", "")
    if not isinstance(prefix, str):
        raise ConfigError(f"{where}.prefix", f"must be a string, got {prefix!r}")
    return DataSource(
        **common,
        bucket=_str(entry, "bucket", where, required=True),
        prefix=prefix,
        endpoint_url=_http_url(entry, "endpoint_url", where, required=False),
        access_key_env=access,
        secret_key_env=secret,
        region=_str(entry, "region", where),
        timeout=float(timeout),
    )


def parse_data_sources(raw: Sequence[Mapping[str, Any]]) -> tuple[DataSource, ...]:
    """Validated sources; ConfigError naming the entry and field for anything wrong."""
    if isinstance(raw, str | bytes | Mapping) or not isinstance(raw, Sequence):
        raise ConfigError("data_sources", "must be a list of data source mappings")
    sources = tuple(_parse_one(entry, i) for i, entry in enumerate(raw))
    _check_unique(sources)
    return sources


def _check_unique(sources: Sequence[DataSource]) -> None:
    seen: set[str] = set()
    for source in sources:
        if source.id in seen:
            raise ConfigError("data_sources", f"id {source.id!r} is used twice")
        seen.add(source.id)


def describe_data_sources(sources: Sequence[DataSource]) -> list[dict[str, Any]]:
    """What FLAME's get_data_sources() shows: id, type and location, never credentials."""
    described: list[dict[str, Any]] = []
    for s in sources:
        item: dict[str, Any] = {"id": s.id, "type": s.type}
        if s.type in ("csv", "files"):
            item["path"] = str(s.path)
        elif s.type == "fhir":
            item["url"] = s.url
        else:
            item.update(bucket=s.bucket, prefix=s.prefix, endpoint_url=s.endpoint_url)
        described.append(item)
    return described


def _secret(source: DataSource, env_field: str) -> str:
    name = cast(str, getattr(source, env_field))
    value = os.environ.get(name)
    if not value:
        raise ConfigError(
            f"data source {source.id!r} {env_field}",
            f"environment variable {name} is not set on this node",
        )
    return value


class DataSourceSet:
    """FLAME's data-source calls over the sources of one node."""

    def __init__(self, sources: Sequence[DataSource]) -> None:
        _check_unique(sources)
        self.sources = tuple(sources)
        self._clients: dict[str, DataClient] = {}
        self._lock = threading.Lock()

    def get_data_sources(self) -> list[dict[str, Any]]:
        return describe_data_sources(self.sources)

    def get_data_client(self, data_id: str) -> DataClient:
        """The client for one source; ValueError for an unknown id, as FLAME reports it."""
        source = next((s for s in self.sources if s.id == data_id), None)
        if source is None:
            known = ", ".join(s.id for s in self.sources) or "none"
            raise ValueError(f"no data source with id {data_id!r} on this node (known: {known})")
        with self._lock:  # boto3 clients are slow to build and thread-safe: make each once
            client = self._clients.get(data_id)
            if client is None:
                client = _make_client(source)
                self._clients[data_id] = client
            return client

    def get_fhir_data(self, fhir_queries: list[str] | None = None) -> list[dict[str, Any]] | None:
        """One dict per FHIR source, query -> result; None when no query is given."""
        if not fhir_queries:
            return None
        results = []
        for source in self.sources:
            if source.type == "fhir":
                client = cast(FhirClient, self.get_data_client(source.id))
                results.append({query: client.get(query) for query in fhir_queries})
        return results

    def get_s3_data(self, s3_keys: list[str] | None = None) -> list[dict[str, bytes]]:
        """One dict per S3 or directory source, dataset name -> bytes; no keys means all."""
        wanted = set(s3_keys or ())
        results: list[dict[str, bytes]] = []
        found: set[str] = set()
        for source in self.sources:
            if source.type == "fhir":
                continue
            client = cast(S3Client | FilesClient, self.get_data_client(source.id))
            names = [n for n in client.list_datasets() if not wanted or n in wanted]
            found.update(names)
            results.append({name: client.get(name) for name in names})
        if missing := wanted - found:
            log.warning("get_s3_data: no data source has %s", ", ".join(sorted(missing)))
        return results


def _make_client(source: DataSource) -> DataClient:
    if source.type == "fhir":
        return FhirClient(
            cast(str, source.url),
            token=_secret(source, "token_env") if source.token_env else None,
            headers=source.headers,
            timeout=source.timeout,
            token_hint=f"the token in ${source.token_env}" if source.token_env else "token_env",
        )
    if source.type == "s3":
        keys = source.access_key_env is not None
        return S3Client(
            cast(str, source.bucket),
            prefix=source.prefix,
            endpoint_url=source.endpoint_url,
            region=source.region,
            access_key=_secret(source, "access_key_env") if keys else None,
            secret_key=_secret(source, "secret_key_env") if keys else None,
            timeout=source.timeout,
        )
    return FilesClient(cast(Path, source.path), source_id=source.id, csv_only=source.type == "csv")
