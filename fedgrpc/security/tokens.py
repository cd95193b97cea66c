"""Signed bearer tokens: Ed25519 JWTs with a role and an optional collaboration scope.

The controller holds the private key and issues tokens; every server verifies them with the
public key only, so a compromised combiner can check tokens but never mint one. Only EdDSA is
accepted: 'none' and HMAC algorithms (which could be forged with the public key as the secret)
are refused before PyJWT even looks at the signature.
"""

from __future__ import annotations

import enum
import hashlib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgrpc.errors import InvalidArgument, Unauthenticated
from fedgrpc.security._files import PathLike, read_file, write_file
from fedgrpc.security.limits import validate_id, validate_name

ALGORITHM = "EdDSA"
DEFAULT_ISSUER = "fedgrpc"
# Clock skew tolerated between the controller that issued a token and a server checking it.
DEFAULT_LEEWAY = 30.0
_REQUIRED_CLAIMS = ["sub", "role", "iat", "jti", "iss"]


class Role(str, enum.Enum):
    ADMIN = "admin"
    USER = "user"
    COMBINER = "combiner"
    CLIENT = "client"


@dataclass(frozen=True, kw_only=True)
class Claims:
    """What a verified token says about its bearer."""

    subject: str
    role: Role
    scope: str | None
    issued_at: int
    expires_at: int | None
    token_id: str
    issuer: str


@dataclass(frozen=True)
class KeyPair:
    """The controller's Ed25519 signing key; ``public_key`` is what verifiers get."""

    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @classmethod
    def load(cls, private_path: PathLike) -> KeyPair:
        pem = read_file(private_path, "token signing key")
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise InvalidArgument(f"{str(private_path)!r} is not an unencrypted PEM key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidArgument(f"{str(private_path)!r} is not an Ed25519 key")
        return cls(key)

    def save(self, private_path: Path, public_path: Path | None = None) -> None:
        """Write the private key (0600) and, when asked, the public key (0644) as PEM."""
        private_pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_file(private_path, private_pem, private=True)
        if public_path is not None:
            write_file(public_path, public_key_pem(self.public_key), private=False)


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path: PathLike) -> Ed25519PublicKey:
    return load_public_key_pem(read_file(path, "token public key"), repr(str(path)))


def load_public_key_pem(pem: bytes, what: str = "the token public key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{what} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidArgument(f"{what} is not an Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    """A short stable id of a public key (the JWT ``kid``), so verifiers holding several keys
    during a rotation pick the right one instead of trying them all."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_role(value: object) -> Role:
    try:
        return Role(value)
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise InvalidArgument(f"role: {value!r} is not one of {known}") from None


class TokenIssuer:
    """Mints tokens signed with the controller's private key."""

    def __init__(
        self,
        private_key: Ed25519PrivateKey | KeyPair,
        issuer: str = DEFAULT_ISSUER,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        key = private_key.private_key if isinstance(private_key, KeyPair) else private_key
        self._key = key
        self._kid = key_id(key.public_key())
        self._issuer = issuer
        self._clock = clock

    def issue(
        self,
        subject: str,
        role: Role | str,
        *,
        scope: str | None = None,
        expires_in: float | None = None,
        token_id: str | None = None,
    ) -> str:
        """A signed token; without ``expires_in`` it is valid until its jti is revoked."""
        if expires_in is not None and expires_in <= 0:
            raise InvalidArgument(f"expires_in: must be positive, got {expires_in}")
        now = int(self._clock())
        claims: dict[str, Any] = {
            "sub": validate_name(subject, "subject"),
            "role": parse_role(role).value,
            "iat": now,
            "jti": validate_id(token_id, "token_id") if token_id else uuid.uuid4().hex,
            "iss": self._issuer,
        }
        if scope is not None:
            claims["scope"] = validate_id(scope, "scope")
        if expires_in is not None:
            claims["exp"] = now + int(expires_in)
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self._kid})


class TokenVerifier:
    """Checks tokens with the issuer's public key(s); raises Unauthenticated for any fault."""

    def __init__(
        self,
        public_keys: Ed25519PublicKey | Iterable[Ed25519PublicKey],
        *,
        issuer: str = DEFAULT_ISSUER,
        revoked: Callable[[str], bool] | None = None,
        leeway: float = DEFAULT_LEEWAY,
    ) -> None:
        keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else list(public_keys)
        if not keys:
            raise InvalidArgument("a token verifier needs at least one public key")
        self._keys = {key_id(k): k for k in keys}
        self._issuer = issuer
        self._revoked = revoked
        self._leeway = leeway

    def verify(self, token: str) -> Claims:
        header = _header(token)
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated(f"token algorithm {header.get('alg')!r} is not accepted")
        payload = self._decode(token, header.get("kid"))
        claims = _claims(payload)
        if self._revoked is not None and self._revoked(claims.token_id):
            raise Unauthenticated("token has been revoked")
        return claims

    def _decode(self, token: str, kid: object) -> dict[str, Any]:
        # A known kid selects one key; otherwise each key is tried (there are one or two).
        known = isinstance(kid, str) and kid in self._keys
        candidates = [self._keys[str(kid)]] if known else list(self._keys.values())
        error: jwt.InvalidTokenError = jwt.InvalidSignatureError()
        for key in candidates:
            try:
                return self._decode_with(token, key)
            except jwt.InvalidSignatureError as exc:
                error = exc
            except jwt.InvalidTokenError as exc:
                raise Unauthenticated(_reason(exc)) from None
        raise Unauthenticated(_reason(error)) from None

    def _decode_with(self, token: str, key: Ed25519PublicKey) -> dict[str, Any]:
        payload: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=self._issuer,
            leeway=self._leeway,
            options={"require": _REQUIRED_CLAIMS},
        )
        return payload


def _header(token: object) -> dict[str, Any]:
    if not isinstance(token, str) or not token:
        raise Unauthenticated("missing token")
    try:
        header: dict[str, Any] = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise Unauthenticated("malformed token") from None
    return header


def _claims(payload: dict[str, Any]) -> Claims:
    try:
        role = Role(payload["role"])
    except ValueError:
        raise Unauthenticated(f"token has an unknown role {payload['role']!r}") from None
    scope, exp = payload.get("scope"), payload.get("exp")
    strings = (payload["sub"], payload["jti"], payload["iss"])
    if not all(isinstance(v, str) for v in strings) or not isinstance(scope, str | None):
        raise Unauthenticated("malformed token claims")
    return Claims(
        subject=payload["sub"],
        role=role,
        scope=scope,
        issued_at=int(payload["iat"]),
        expires_at=int(exp) if exp is not None else None,
        token_id=payload["jti"],
        issuer=payload["iss"],
    )


def _reason(error: jwt.InvalidTokenError) -> str:
    """A short reason for the peer; enough to fix its setup, nothing about our keys."""
    if isinstance(error, jwt.ExpiredSignatureError):
        return "token has expired"
    if isinstance(error, jwt.InvalidSignatureError):
        return "token signature is not valid"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "token is not valid yet"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"token lacks the {error.claim!r} claim"
    if isinstance(error, jwt.InvalidIssuerError):
        return "token issuer is not accepted"
    return "malformed token"
