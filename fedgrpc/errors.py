"""Domain errors and the one table that maps them to gRPC status codes.

Every layer raises these; servicers never pick status codes themselves. The server side turns
an error into ``context.abort(code, message)`` through :func:`status_for`; the client side turns
an ``RpcError`` back into the matching exception with :func:`from_rpc_error`, so callers catch
``fedgrpc.errors.NotFound`` rather than comparing message strings.
"""

from __future__ import annotations

import grpc


class FedgrpcError(Exception):
    """Base of every error fedgrpc raises on purpose. ``str(err)`` is meant for a person."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self._code = code

    @property
    def code(self) -> grpc.StatusCode:
        """The status code: from the table, or the one a remote peer sent for unmapped codes."""
        return self._code if self._code is not None else status_for(self)


class NotFound(FedgrpcError):
    """The named record or object does not exist."""


class InvalidArgument(FedgrpcError):
    """The request itself is wrong (bad value, malformed bytes); retrying it will not help."""


class AlreadyExists(FedgrpcError):
    """A record with that id or name exists already."""


class FailedPrecondition(FedgrpcError):
    """The request is well formed but the system is not in a state to do it now."""


class Unauthenticated(FedgrpcError):
    """No valid credentials were presented."""


class PermissionDenied(FedgrpcError):
    """The caller is known but may not do this."""


class ResourceExhausted(FedgrpcError):
    """A size or rate limit was hit."""


class Unavailable(FedgrpcError):
    """A peer or backend cannot be reached right now; retrying later may work."""


class TlsHandshakeFailed(Unavailable):
    """The TLS handshake with a peer failed (wrong CA, expired or wrong-host certificate, or a
    refused client certificate). Retrying does not fix it, so callers give up at once."""


class DataLoss(FedgrpcError):
    """Bytes were lost or corrupted on the way (checksum mismatch, truncated stream)."""


class DeadlineExceeded(FedgrpcError):
    """The operation did not finish in the time it was given."""


class Aborted(FedgrpcError):
    """A concurrent change won; the caller may re-read and retry."""


class ConfigError(InvalidArgument):
    """A configuration value is invalid; the message names the field and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"config field '{field}': {reason}")
        self.field = field
        self.reason = reason


# --- model bytes -----------------------------------------------------------------------------
class MalformedModel(InvalidArgument):
    """The bytes are not a valid safetensors model."""


class TruncatedStream(DataLoss):
    """A chunked stream ended before the size its header announced."""


class ChecksumMismatch(DataLoss):
    """The digest of the received bytes differs from the one announced."""


class PayloadTooLarge(ResourceExhausted):
    """A payload exceeds the configured size limit."""


# --- encrypted intermediate data ----------------------------------------------------------
class DecryptionError(FedgrpcError):
    """A sealed blob did not open: tampered with, for another node, or from another sender.

    Not a DataLoss subclass on purpose: code that retries on DataLoss (a corrupted transfer)
    must not retry this, since the same bytes will never open.
    """

    def __init__(self, detail: str = "") -> None:
        message = "ciphertext was tampered with or not meant for this node"
        super().__init__(f"{message} ({detail})" if detail else message)
        self.detail = detail


# The table. Order matters only in that subclasses are resolved by walking the MRO, so a new
# domain error inherits its parent's code unless it is listed here itself.
_STATUS_TABLE: dict[type[FedgrpcError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DataLoss: grpc.StatusCode.DATA_LOSS,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Aborted: grpc.StatusCode.ABORTED,
    DecryptionError: grpc.StatusCode.DATA_LOSS,
}

# A code listed twice (DecryptionError shares DATA_LOSS) maps back to its first, generic class.
_ERROR_BY_STATUS: dict[grpc.StatusCode, type[FedgrpcError]] = {}
for _err, _code in _STATUS_TABLE.items():
    _ERROR_BY_STATUS.setdefault(_code, _err)


def status_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC status code for ``error``; UNKNOWN for anything that is not a FedgrpcError."""
    for cls in type(error).__mro__:
        code = _STATUS_TABLE.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.UNKNOWN


def error_for_status(code: grpc.StatusCode) -> type[FedgrpcError]:
    """The exception class a client raises for a status code (FedgrpcError when unmapped)."""
    return _ERROR_BY_STATUS.get(code, FedgrpcError)


# How gRPC words a failed TLS handshake in an UNAVAILABLE status (it has no code of its own).
_TLS_FAILURE_MARKERS = ("handshake", "ssl_error", "certificate_verify_failed", "tlsv1_alert")


def from_rpc_error(error: grpc.RpcError) -> FedgrpcError:
    """Turn a failed call into the typed exception for its status code, keeping the message."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    kind = error_for_status(code)
    if code == grpc.StatusCode.UNAVAILABLE and any(
        marker in (details or "").lower() for marker in _TLS_FAILURE_MARKERS
    ):
        kind = TlsHandshakeFailed
        details = f"TLS handshake failed (check the CA and certificates): {details}"
    exc = kind(details or code.name, code=code)
    exc.__cause__ = error
    return exc
