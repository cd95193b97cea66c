"""Tokens: what verifies, everything that must not, and the controller's key bootstrap."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from fedgrpc.errors import InvalidArgument, Unauthenticated
from fedgrpc.security import (
    KeyPair,
    Role,
    TokenIssuer,
    TokenVerifier,
    bootstrap_admin_token,
    controller_verifier,
    load_public_key,
    verifier_from_file,
)
from fedgrpc.security.keystore import private_key_path, public_key_path
from fedgrpc.security.tokens import key_id
from tests.security.conftest import Tokens


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(role: str = "admin") -> dict[str, object]:
    return {"sub": "mallory", "role": role, "iat": int(time.time()), "jti": "x", "iss": "fedgrpc"}


def _hs256_with_public_key(tokens: Tokens) -> str:
    """HS256 keyed with the PEM public key: the classic algorithm-confusion forgery (forged by
    hand, since PyJWT itself refuses to build it)."""
    secret = tokens.keys.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kid = key_id(tokens.keys.public_key)
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{_b64(_claims())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def test_round_trip_carries_every_claim(tokens: Tokens) -> None:
    token = tokens.issuer.issue(
        "site-1", "client", scope="collab-7", expires_in=600, token_id="tok-1"
    )
    claims = tokens.verifier().verify(token)
    assert (claims.subject, claims.role, claims.scope) == ("site-1", Role.CLIENT, "collab-7")
    assert claims.token_id == "tok-1"
    assert claims.issuer == "fedgrpc"
    assert claims.expires_at == claims.issued_at + 600
    no_expiry = tokens.verifier().verify(tokens.token(Role.USER))
    assert no_expiry.expires_at is None
    assert no_expiry.scope is None
    assert len(no_expiry.token_id) == 32  # a fresh uuid4 per token


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda t: t.foreign(Role.ADMIN), "signature"),
        (lambda t: t.expired(Role.ADMIN), "expired"),
        (lambda t: "", "missing"),
        (lambda t: "a.b.c", "malformed"),
        (lambda t: t.token(Role.ADMIN)[:-4] + "AAAA", "signature"),
        # alg=none: a token anyone can write, unsigned.
        (lambda t: f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.", "algorithm"),
        (_hs256_with_public_key, "algorithm"),
        (lambda t: jwt.encode(_claims("root"), t.keys.private_key, "EdDSA"), "role"),
        (lambda t: jwt.encode({"sub": "x", "role": "admin"}, t.keys.private_key, "EdDSA"), "lacks"),
        (lambda t: TokenIssuer(t.keys, issuer="someone").issue("x", "admin"), "issuer"),
    ],
    ids=[
        "foreign-key",
        "expired",
        "empty",
        "garbage",
        "tampered",
        "alg-none",
        "hs256-public-key",
        "unknown-role",
        "missing-claims",
        "wrong-issuer",
    ],
)
def test_refused(tokens: Tokens, make, reason: str) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        tokens.verifier().verify(make(tokens))


def test_revoked_jti_is_refused(tokens: Tokens) -> None:
    revoked = {"stolen"}
    verifier = tokens.verifier(revoked=revoked.__contains__)
    token = tokens.issuer.issue("site-1", Role.CLIENT, token_id="stolen")
    with pytest.raises(Unauthenticated, match="revoked"):
        verifier.verify(token)
    assert verifier.verify(tokens.token(Role.CLIENT)).subject == "client-1"


def test_leeway_tolerates_small_clock_skew(tokens: Tokens) -> None:
    just_expired = TokenIssuer(tokens.keys, clock=lambda: time.time() - 70).issue(
        "x", "user", expires_in=60
    )
    assert tokens.verifier().verify(just_expired).subject == "x"  # 10 s late, 30 s leeway
    with pytest.raises(Unauthenticated, match="expired"):
        TokenVerifier(tokens.keys.public_key, leeway=0).verify(just_expired)


def test_verifier_with_two_keys_accepts_both_during_rotation() -> None:
    old, new = KeyPair.generate(), KeyPair.generate()
    verifier = TokenVerifier([old.public_key, new.public_key])
    for pair in (old, new):
        assert verifier.verify(TokenIssuer(pair).issue("x", "user")).subject == "x"


def test_issue_validates_its_input(tokens: Tokens) -> None:
    with pytest.raises(InvalidArgument, match="role"):
        tokens.issuer.issue("x", "superuser")
    with pytest.raises(InvalidArgument, match="subject"):
        tokens.issuer.issue("../etc", "user")
    with pytest.raises(InvalidArgument, match="expires_in"):
        tokens.issuer.issue("x", "user", expires_in=0)
    with pytest.raises(InvalidArgument, match="scope"):
        tokens.issuer.issue("x", "user", scope="a b")


def test_keypair_files(tmp_path: Path) -> None:
    pair = KeyPair.generate()
    pair.save(tmp_path / "k.pem", tmp_path / "k.pub")
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    loaded = KeyPair.load(tmp_path / "k.pem")
    token = TokenIssuer(loaded).issue("x", "user")
    assert TokenVerifier(load_public_key(tmp_path / "k.pub")).verify(token).subject == "x"
    with pytest.raises(InvalidArgument, match="does not exist"):
        KeyPair.load(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(InvalidArgument, match="not an unencrypted PEM key"):
        KeyPair.load(tmp_path / "junk.pem")


def test_bootstrap_admin_token_is_idempotent(tmp_path: Path) -> None:
    path = bootstrap_admin_token(tmp_path)
    assert path == tmp_path / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_key_path(tmp_path).stat().st_mode) == 0o600
    first_token, first_key = path.read_text(), private_key_path(tmp_path).read_bytes()
    assert bootstrap_admin_token(tmp_path) == path
    assert path.read_text() == first_token
    assert private_key_path(tmp_path).read_bytes() == first_key
    claims = controller_verifier(tmp_path).verify(first_token.strip())
    assert (claims.subject, claims.role, claims.expires_at) == ("admin", Role.ADMIN, None)
    assert verifier_from_file(public_key_path(tmp_path)).verify(first_token.strip())


def test_bootstrap_reissues_a_token_the_key_no_longer_verifies(tmp_path: Path) -> None:
    path = bootstrap_admin_token(tmp_path)
    private_key_path(tmp_path).unlink()  # the operator replaced the key
    bootstrap_admin_token(tmp_path)
    assert controller_verifier(tmp_path).verify(path.read_text().strip()).role == Role.ADMIN
