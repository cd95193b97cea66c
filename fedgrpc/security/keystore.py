"""The controller's token key pair on disk, and the admin token written at first start.

Layout under the controller's data directory::

    keys/token.key    Ed25519 private key (0600), only the controller reads it
    keys/token.pub    public key, copied to combiners so they can verify client tokens
    admin.token       a non-expiring admin token (0600) for the operator's first steps
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedgrpc.errors import NotFound, Unauthenticated
from fedgrpc.security._files import PathLike, write_file
from fedgrpc.security.tokens import KeyPair, Role, TokenIssuer, TokenVerifier, load_public_key

KEYS_DIR = "keys"
PRIVATE_KEY_FILE = "token.key"
PUBLIC_KEY_FILE = "token.pub"
ADMIN_TOKEN_FILE = "admin.token"
ADMIN_SUBJECT = "admin"


def private_key_path(data_dir: PathLike) -> Path:
    return Path(data_dir) / KEYS_DIR / PRIVATE_KEY_FILE


def public_key_path(data_dir: PathLike) -> Path:
    return Path(data_dir) / KEYS_DIR / PUBLIC_KEY_FILE


def load_or_create_keypair(data_dir: PathLike) -> KeyPair:
    """The key pair under ``data_dir/keys``, generated (and saved) when there is none yet."""
    private_path = private_key_path(data_dir)
    if private_path.exists():
        pair = KeyPair.load(private_path)
        if not public_key_path(data_dir).exists():  # re-derive a deleted public half
            pair.save(private_path, public_key_path(data_dir))
        return pair
    pair = KeyPair.generate()
    (Path(data_dir) / KEYS_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)
    pair.save(private_path, public_key_path(data_dir))
    return pair


def bootstrap_admin_token(data_dir: PathLike) -> Path:
    """Make sure ``data_dir/admin.token`` holds an admin token the current key verifies.

    Idempotent: a second start keeps both key and token. A token that no longer verifies (the
    key was replaced) is re-issued, so the file never holds a token that cannot work.
    """
    pair = load_or_create_keypair(data_dir)
    token_path = Path(data_dir) / ADMIN_TOKEN_FILE
    if token_path.exists() and _still_valid(token_path, pair):
        return token_path
    token = TokenIssuer(pair).issue(ADMIN_SUBJECT, Role.ADMIN)
    write_file(token_path, f"{token}\n".encode(), private=True)
    return token_path


def controller_verifier(
    data_dir: PathLike, *, revoked: Callable[[str], bool] | None = None
) -> TokenVerifier:
    """A verifier for the controller itself (its own public key)."""
    return TokenVerifier(load_or_create_keypair(data_dir).public_key, revoked=revoked)


def verifier_from_file(
    public_key: PathLike, *, revoked: Callable[[str], bool] | None = None
) -> TokenVerifier:
    """A verifier for a combiner, from the controller's public key file."""
    return TokenVerifier(load_public_key(public_key), revoked=revoked)


def _still_valid(token_path: Path, pair: KeyPair) -> bool:
    try:
        TokenVerifier(pair.public_key).verify(token_path.read_text().strip())
    except (Unauthenticated, OSError, UnicodeDecodeError):
        return False
    return True


def read_admin_token(data_dir: PathLike) -> str:
    """The admin token the controller wrote into ``data_dir`` at its first start."""
    path = Path(data_dir) / ADMIN_TOKEN_FILE
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise NotFound(
            f"no admin token at {path}: start the controller with this data directory first"
        ) from exc


def mint_token(
    data_dir: PathLike,
    subject: str,
    role: Role | str,
    *,
    scope: str | None = None,
    expires_in: float | None = None,
) -> str:
    """A token signed with the key of the controller whose data directory is ``data_dir``
    (the key pair is made when absent). For operators, ``fedgrpc run`` and test fixtures."""
    return TokenIssuer(load_or_create_keypair(data_dir)).issue(
        subject, role, scope=scope, expires_in=expires_in
    )
