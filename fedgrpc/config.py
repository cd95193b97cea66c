"""Daemon configuration: frozen, keyword-only dataclasses with one loader.

Precedence, lowest first: field defaults, a YAML or TOML file, ``FEDGRPC_<ROLE>_<FIELD>``
environment variables, then explicit overrides (CLI options). Every value is coerced to the
field's type and validated at start-up; a bad one raises :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fedgrpc.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

MiB = 1024 * 1024
DEFAULT_CONTROLLER_PORT = 12080


def _check(ok: bool, name: str, reason: str) -> None:
    if not ok:
        raise ConfigError(name, reason)


def _check_port(name: str, port: int) -> None:
    _check(0 <= port <= 65535, name, f"must be between 0 and 65535, got {port}")


def _check_positive(name: str, value: float) -> None:
    _check(value > 0, name, f"must be greater than 0, got {value}")


def _check_heartbeats(interval: float, timeout: float) -> None:
    _check_positive("heartbeat_interval", interval)
    _check(timeout > interval, "heartbeat_timeout", "must be longer than heartbeat_interval")


def _check_inline(limits: TransferLimits, value: int) -> None:
    _check(
        0 <= value <= limits.max_message_size // 2,
        "inline_model_bytes",
        f"must be 0 (off) or at most half of max_message_size ({limits.max_message_size}), "
        f"got {value}",
    )


def _check_address(name: str, address: str) -> None:
    host, sep, port = address.rpartition(":")
    _check(bool(sep and host and port.isdigit()), name, f"must be HOST:PORT, got {address!r}")
    _check_port(name, int(port))


@dataclass(frozen=True, kw_only=True)
class TransferLimits:
    """Limits shared by every daemon that moves model bytes."""

    max_model_size: int = 2048 * MiB
    chunk_size: int = 1 * MiB
    # Control-stream messages are small; model bytes ride on them only up to
    # inline_model_bytes (combiner and client), larger ones in chunks (see DESIGN.md).
    max_message_size: int = 16 * MiB

    def __post_init__(self) -> None:
        _check_positive("max_model_size", self.max_model_size)
        _check(
            0 < self.chunk_size <= self.max_message_size // 2,
            "chunk_size",
            f"must be > 0 and at most half of max_message_size ({self.max_message_size}), "
            f"got {self.chunk_size}",
        )
        _check(self.max_message_size >= 64 * 1024, "max_message_size", "must be at least 64 KiB")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """TLS for a daemon's server and its outgoing channels.

    ``tls_cert``/``tls_key`` serve TLS (and are the client certificate toward peers that require
    one); ``tls_ca`` verifies peers: the servers this daemon dials and, with
    ``require_client_cert``, the clients that dial it (mutual TLS).
    """

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        _check(
            (self.tls_cert is None) == (self.tls_key is None),
            "tls_cert" if self.tls_key is not None else "tls_key",
            "tls_cert and tls_key go together",
        )
        if self.require_client_cert:
            _check(self.tls_ca is not None, "require_client_cert", "needs tls_ca to verify clients")
            _check(self.tls_cert is not None, "require_client_cert", "needs tls_cert/tls_key")

    @property
    def serves_tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def dials_tls(self) -> bool:
        """Outgoing channels use TLS when a CA to verify the peer is configured."""
        return self.tls_ca is not None


def _check_bind(host: str, tls: TlsSettings, insecure: bool) -> None:
    """A daemon reachable from other hosts must use TLS unless told ``insecure`` on purpose."""
    if host not in LOOPBACK_HOSTS and not tls.serves_tls and not insecure:
        raise ConfigError(
            "host",
            f"binding {host} (not loopback) needs TLS (tls_cert/tls_key) or insecure=true",
        )


@dataclass(frozen=True, kw_only=True)
class ControllerConfig(TransferLimits, TlsSettings):
    """The hub: statestore, model store, sessions and the user API."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_CONTROLLER_PORT
    data_dir: Path = Path("fedgrpc-data")
    mongo_uri: str | None = None
    mongo_database: str = "fedgrpc"
    # Combiners send a heartbeat on their link this often; silent for `*_timeout`, they are
    # marked offline and their clients are left out of the next round.
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 20.0
    log_level: str = "INFO"
    # Serve plaintext on a non-loopback address anyway (a warning is logged at start-up).
    insecure: bool = False
    # Check a bearer token on every call (the key pair and an admin token are kept under
    # data_dir, also with MongoDB). Turn off only for tests of unrelated parts.
    auth: bool = True
    # Analyses (FLAME): how long the broker keeps trying to deliver a message whose envelope
    # names no time-to-live, and the first re-send delay for an unacknowledged one (it doubles
    # up to 30 s). A node whose client is gone longer than the grace fails its analysis.
    message_ttl_seconds: float = 3600.0
    message_retry_seconds: float = 2.0
    analysis_node_grace_seconds: float = 30.0
    # Global models and combiners' partial means up to this size travel inline on the
    # combiner link (the smaller of this and the combiner's setting applies; 0 = off).
    inline_model_bytes: int = 1 * MiB

    def __post_init__(self) -> None:
        TransferLimits.__post_init__(self)
        TlsSettings.__post_init__(self)
        _check_port("port", self.port)
        _check_inline(self, self.inline_model_bytes)
        _check_heartbeats(self.heartbeat_interval, self.heartbeat_timeout)
        _check_positive("message_ttl_seconds", self.message_ttl_seconds)
        _check_positive("message_retry_seconds", self.message_retry_seconds)
        _check_positive("analysis_node_grace_seconds", self.analysis_node_grace_seconds)
        _check_bind(self.host, self, self.insecure)
        if self.mongo_uri is not None:
            _check(
                self.mongo_uri.startswith(("mongodb://", "mongodb+srv://")),
                "mongo_uri",
                "must start with mongodb:// or mongodb+srv://",
            )


@dataclass(frozen=True, kw_only=True)
class CombinerConfig(TransferLimits, TlsSettings):
    """A scale-out aggregation node between the controller and the clients."""

    controller: str = f"127.0.0.1:{DEFAULT_CONTROLLER_PORT}"
    name: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    # The address clients are told to dial; defaults to host:bound-port.
    advertise_address: str | None = None
    max_clients: int = 10_000
    # Updates received and folded at the same time. Each in-flight update costs about its
    # size in memory, so this bounds the combiner's memory whatever the number of clients;
    # waiting uploads are held back by gRPC flow control.
    max_concurrent_uploads: int = 2
    # Models (global models and updates) up to this size travel inline on the client's Connect
    # stream instead of through ModelService (one message instead of two more RPCs per task);
    # 0 turns it off. The smaller of this and the client's own setting applies.
    inline_model_bytes: int = 1 * MiB
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 20.0
    # Client heartbeats per second the combiner asks for at most: once more clients are
    # connected than heartbeat_interval x this, every client is asked to beat less often
    # (timeouts scaled alike; see fedgrpc.combiner.services.heartbeat_pace). Every heartbeat
    # costs both ends a message; at 16,000 clients beating every 5 s they took most of a
    # 2-core machine.
    max_client_heartbeats_per_second: float = 200.0
    log_level: str = "INFO"
    insecure: bool = False
    # The combiner's bearer token (role combiner, subject = name) for the controller.
    token: str | None = field(default=None, repr=False)
    # Verify client tokens with the key the controller sends at registration. Turn off only
    # together with the controller's auth, for tests of unrelated parts.
    auth: bool = True

    def require_token(self) -> str | None:
        """The token, checked at start-up: with auth on, a combiner cannot work without one."""
        if self.auth:
            _check(
                bool(self.token),
                "token",
                "a combiner needs a token to reach the controller (--token or "
                "FEDGRPC_COMBINER_TOKEN; `fedgrpc token create --role combiner --subject NAME`)",
            )
        return self.token

    def __post_init__(self) -> None:
        TransferLimits.__post_init__(self)
        TlsSettings.__post_init__(self)
        _check_bind(self.host, self, self.insecure)
        _check_address("controller", self.controller)
        _check_port("port", self.port)
        _check_positive("max_clients", self.max_clients)
        _check_positive("max_concurrent_uploads", self.max_concurrent_uploads)
        _check_inline(self, self.inline_model_bytes)
        _check_heartbeats(self.heartbeat_interval, self.heartbeat_timeout)
        _check_positive("max_client_heartbeats_per_second", self.max_client_heartbeats_per_second)
        if self.advertise_address is not None:
            _check_address("advertise_address", self.advertise_address)


@dataclass(frozen=True, kw_only=True)
class ClientConfig(TransferLimits, TlsSettings):
    """A node at a data site that runs the user's train/validate code."""

    controller: str = f"127.0.0.1:{DEFAULT_CONTROLLER_PORT}"
    name: str | None = None
    preferred_combiner: str | None = None
    # Used only with a combiner that announces no pace; fedgrpc's combiners set it.
    heartbeat_interval: float = 5.0
    # Reconnect backoff: base * 2**attempt, capped, with full jitter.
    reconnect_base_delay: float = 0.2
    reconnect_max_delay: float = 10.0
    log_level: str = "INFO"
    tags: tuple[str, ...] = field(default_factory=tuple)
    # Models up to this size may travel inline on the Connect stream (see CombinerConfig);
    # 0: always ModelService.
    inline_model_bytes: int = 1 * MiB
    # The client's bearer token (role client, subject = name) for controller and combiner.
    token: str | None = field(default=None, repr=False)
    # Analyses (FLAME): the node's key pair, local intermediate data and tags live here;
    # None = ``$XDG_DATA_HOME/fedgrpc/nodes/<name>`` (~/.local/share without XDG_DATA_HOME).
    data_dir: Path | None = None
    # Data sources the node offers analyses (mappings with at least a type; see
    # fedgrpc.flame.datasources). From a file: a list of tables/mappings; from the
    # environment: a JSON list.
    data_sources: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    # Extra sys.path entries for analysis processes (where their modules live).
    analysis_python_path: tuple[str, ...] = field(default_factory=tuple)
    # Seconds between SIGTERM and SIGKILL when an analysis is stopped.
    analysis_stop_grace: float = 5.0

    def __post_init__(self) -> None:
        TransferLimits.__post_init__(self)
        TlsSettings.__post_init__(self)
        _check_address("controller", self.controller)
        _check_inline(self, self.inline_model_bytes)
        _check_positive("analysis_stop_grace", self.analysis_stop_grace)
        for source in self.data_sources:
            _check(isinstance(source, dict), "data_sources", "must be a list of mappings")
        _check_positive("heartbeat_interval", self.heartbeat_interval)
        _check_positive("reconnect_base_delay", self.reconnect_base_delay)
        _check(
            self.reconnect_max_delay >= self.reconnect_base_delay,
            "reconnect_max_delay",
            "must be at least reconnect_base_delay",
        )


Config = TypeVar("Config", ControllerConfig, CombinerConfig, ClientConfig)

_ROLE_OF: dict[type[Any], str] = {
    ControllerConfig: "controller",
    CombinerConfig: "combiner",
    ClientConfig: "client",
}


def load_config(
    cls: type[Config],
    *,
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build ``cls`` from defaults, a file, the environment and overrides (in that order)."""
    role = _ROLE_OF[cls]
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(path, role))
    values.update(_from_environ(cls, role, os.environ if environ is None else environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return _build(cls, values)


def _read_file(path: Path, role: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError("config", f"{path} is not valid: {exc}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a mapping of field names to values")
    # A shared file may hold one section per role: {"controller": {...}, "client": {...}}.
    section = data.get(role, data)
    if not isinstance(section, dict):
        raise ConfigError(role, f"section in {path} must be a mapping")
    return {str(k).replace("-", "_"): v for k, v in section.items() if k not in _ROLE_OF.values()}


def _from_environ(cls: type[Any], role: str, environ: Mapping[str, str]) -> dict[str, Any]:
    prefix = f"FEDGRPC_{role.upper()}_"
    names = {f.name for f in dataclasses.fields(cls)}
    found: dict[str, Any] = {}
    for key, raw in environ.items():
        if key.startswith(prefix):
            name = key[len(prefix) :].lower()
            if name not in names:
                raise ConfigError(key, f"unknown setting; known: {', '.join(sorted(names))}")
            found[name] = raw
    return found


def _build(cls: type[Config], values: Mapping[str, Any]) -> Config:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting; known: {', '.join(sorted(names))}")
    kwargs = {name: _coerce(name, hints[name], value) for name, value in values.items()}
    return cls(**kwargs)


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Turn a file or environment value into the field's declared type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return _coerce(name, args[0], value)
    if origin is tuple and typing.get_args(hint)[0] is not str:
        return _coerce_mappings(name, value)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(name, f"expected a list, got {value!r}")
        return tuple(str(i).strip() for i in items if str(i).strip())
    return _coerce_scalar(name, hint, value)


def _coerce_mappings(name: str, value: Any) -> tuple[dict[str, Any], ...]:
    """A list of mappings: from a file as is, from the environment as a JSON list."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError:
            raise ConfigError(name, f"expected a JSON list of mappings, got {value!r}") from None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(i, Mapping) for i in value):
        raise ConfigError(name, f"expected a list of mappings, got {value!r}")
    return tuple(dict(item) for item in value)


def _coerce_scalar(name: str, hint: Any, value: Any) -> Any:
    if hint is bool:
        return _coerce_bool(name, value)
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(name, f"expected a number, got {value!r}")
        try:
            return hint(value)
        except (TypeError, ValueError):
            kind = "an integer" if hint is int else "a number"
            raise ConfigError(name, f"expected {kind}, got {value!r}") from None
    if hint is Path:
        return Path(str(value)).expanduser()
    if not isinstance(value, (str, int, float)):
        raise ConfigError(name, f"expected text, got {value!r}")
    return str(value)


def _coerce_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"expected true or false, got {value!r}")
