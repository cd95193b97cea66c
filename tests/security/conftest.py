"""Keys, tokens and certificates shared by the security tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fedgrpc.security import KeyPair, Role, TokenIssuer, TokenVerifier
from fedgrpc.security.certs import CertFiles, init_ca, issue_certificate


class Tokens:
    """Tokens of every kind the tests need, from one controller key and one stranger's key."""

    def __init__(self) -> None:
        self.keys = KeyPair.generate()
        self.issuer = TokenIssuer(self.keys)
        self._stranger = TokenIssuer(KeyPair.generate())
        self._past = TokenIssuer(self.keys, clock=lambda: time.time() - 3600)

    def verifier(self, revoked: Callable[[str], bool] | None = None) -> TokenVerifier:
        return TokenVerifier(self.keys.public_key, revoked=revoked)

    def token(self, role: Role, subject: str | None = None, *, scope: str | None = None) -> str:
        return self.issuer.issue(subject or f"{role.value}-1", role, scope=scope)

    def foreign(self, role: Role) -> str:
        """Right claims, signed by another key."""
        return self._stranger.issue(f"{role.value}-1", role)

    def expired(self, role: Role) -> str:
        """Issued an hour ago, valid for a minute (well past the verifier's leeway)."""
        return self._past.issue(f"{role.value}-1", role, expires_in=60)


@pytest.fixture(scope="session")
def tokens() -> Tokens:
    return Tokens()


class Pki:
    """A development CA (server cert for localhost/127.0.0.1, a client cert) and a rogue CA."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "ca"
        self.ca, self.server = init_ca(self.dir)
        self.client = issue_certificate(self.dir, "site-1", client=True)
        self.other_dir = root / "other"
        self.other_ca, self.other_server = init_ca(self.other_dir)
        self.other_client = issue_certificate(self.other_dir, "site-1", client=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


__all__ = ["CertFiles", "Pki", "Tokens"]
