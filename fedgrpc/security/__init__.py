"""Security: TLS/mTLS credentials, signed bearer tokens with roles, authorization, limits.

Wiring in a daemon (see each module for details)::

    verifier = controller_verifier(data_dir)              # or verifier_from_file(pub_key)
    interceptor = AuthInterceptor(verifier, ServerKind.CONTROLLER)
    creds = server_credentials(cert, key, ca, require_client_cert=True)
    await start_server(..., interceptors=[interceptor], credentials=creds)
"""

from fedgrpc.security.authz import AUTHORIZATION, ServerKind, allowed_roles, is_public
from fedgrpc.security.bearer import (
    bearer_call_credentials,
    bearer_channel,
    bearer_interceptors,
    bearer_metadata,
    bearer_token,
)
from fedgrpc.security.bearer_channel import BearerChannel
from fedgrpc.security.certs import CertFiles, init_ca, issue_certificate
from fedgrpc.security.interceptor import AuthInterceptor, current_claims, require_claims
from fedgrpc.security.keystore import (
    bootstrap_admin_token,
    controller_verifier,
    load_or_create_keypair,
    mint_token,
    read_admin_token,
    verifier_from_file,
)
from fedgrpc.security.limits import validate_id, validate_metadata_size, validate_name
from fedgrpc.security.ratelimit import FailureLimiter, StreamLimiter
from fedgrpc.security.tls import channel_credentials, peer_identity, server_credentials
from fedgrpc.security.tokens import (
    Claims,
    KeyPair,
    Role,
    TokenIssuer,
    TokenVerifier,
    load_public_key,
)

__all__ = [
    "AUTHORIZATION",
    "AuthInterceptor",
    "BearerChannel",
    "CertFiles",
    "Claims",
    "FailureLimiter",
    "KeyPair",
    "Role",
    "ServerKind",
    "StreamLimiter",
    "TokenIssuer",
    "TokenVerifier",
    "allowed_roles",
    "bearer_call_credentials",
    "bearer_channel",
    "bearer_interceptors",
    "bearer_metadata",
    "bearer_token",
    "bootstrap_admin_token",
    "channel_credentials",
    "controller_verifier",
    "current_claims",
    "init_ca",
    "is_public",
    "issue_certificate",
    "load_or_create_keypair",
    "load_public_key",
    "mint_token",
    "peer_identity",
    "read_admin_token",
    "require_claims",
    "server_credentials",
    "validate_id",
    "validate_metadata_size",
    "validate_name",
    "verifier_from_file",
]
