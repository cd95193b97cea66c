"""Per-recipient encryption of intermediate data (FLAME's ``remote_node_ids``).

Scheme: HPKE (RFC 9180) in **auth mode** with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
AES-256-GCM wraps a fresh 32-byte content key for each recipient; the content is encrypted once
with AES-256-GCM under that key.

Why this is written out here rather than calling ``cryptography.hazmat.primitives.hpke``: the
installed ``cryptography`` (50.x) offers HPKE in base mode only. Base mode hides the data from
everyone but the recipient, but anyone holding the recipient's *public* key can produce a valid
ciphertext, so it cannot tell the recipient who sent it. FLAME decrypts with ``sender_node_id``
and a blob from another sender must fail, which is exactly what RFC 9180's auth mode (the KEM
mixes an ephemeral-static and a static-static X25519 term) gives. Our key schedule is checked in
the tests against the library's own base-mode HPKE, so only the auth-mode additions
(RFC 9180 §4.1 AuthEncap/AuthDecap, mode 0x02) are ours. Every ECDH output goes through HKDF.

Blob layout (no pickle; everything except the ciphertext is readable JSON)::

    b"FGSEAL1\\n" | uint32 big-endian header length | header JSON (UTF-8) | AES-GCM ciphertext+tag

The header names the analysis, object, sender and, per recipient, the HPKE ``enc`` and the
wrapped key. The content AEAD authenticates the whole prefix, so a flipped bit anywhere fails for
every recipient. Each wrapped key carries the content key *and* the SHA-256 of the plaintext: a
recipient knows the content key, and without that commitment it could re-encrypt other content
under the sender's wraps for the other recipients.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from fedgrpc.errors import DecryptionError, InvalidArgument

__all__ = [
    "KEY_FILE",
    "DecryptionError",
    "NodeKeys",
    "open_sealed",
    "seal",
    "sealed_recipients",
]

KEY_FILE = "node_key.pem"
MAGIC = b"FGSEAL1\n"
VERSION = 1
SUITE = "HPKE-auth/DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM"
_MAX_HEADER = 16 * 1024 * 1024  # far above any real recipient list; bounds a forged length
_KEY_LEN = 32
_HASH_LEN = 32

# RFC 9180 identifiers: KEM 0x0020 DHKEM(X25519, HKDF-SHA256), KDF 0x0001, AEAD 0x0002.
_KEM_SUITE_ID = b"KEM" + struct.pack(">H", 0x0020)
_HPKE_SUITE_ID = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0002)
MODE_BASE = 0x00
MODE_AUTH = 0x02


# --- keys ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeKeys:
    """A node's X25519 key pair; only :attr:`public_bytes` ever leaves the node."""

    private_key: X25519PrivateKey

    @classmethod
    def generate(cls) -> NodeKeys:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, directory: Path) -> NodeKeys:
        """The key in ``directory/node_key.pem``, created (mode 0600) at the first start."""
        directory = Path(directory)
        path = directory / KEY_FILE
        if not path.exists():
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            keys = cls.generate()
            pem = keys.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # mkstemp files are 0600 from the start; link() never replaces an existing file, so
            # two processes starting at once end up sharing whichever key was linked first.
            fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{KEY_FILE}.")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(pem)
                os.link(temp_name, path)
                return keys
            except FileExistsError:
                pass
            finally:
                Path(temp_name).unlink(missing_ok=True)
        return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> NodeKeys:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            # Like ssh: a private key others can read is not used (and not silently "fixed").
            raise InvalidArgument(
                f"node key {str(path)!r} is readable by others (mode {mode:o}); "
                f"run 'chmod 600 {path}'"
            )
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"node key {str(path)!r} is not a PEM private key") from exc
        if not isinstance(key, X25519PrivateKey):
            raise InvalidArgument(f"node key {str(path)!r} is not an X25519 key")
        return cls(key)

    @property
    def public_bytes(self) -> bytes:
        """The 32 raw public-key bytes, what the controller stores for this node."""
        return _raw(self.private_key.public_key())


def _raw(public_key: X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _public_key(raw: bytes, who: str) -> X25519PublicKey:
    if not isinstance(raw, bytes | bytearray) or len(raw) != 32:
        raise InvalidArgument(f"public key of {who} must be 32 raw X25519 bytes")
    return X25519PublicKey.from_public_bytes(bytes(raw))


# --- RFC 9180 primitives ------------------------------------------------------------------------
def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    # HKDF-Extract is HMAC(salt, ikm); an empty salt is the RFC's "zero-length" salt.
    return hmac.digest(salt, b"HPKE-v1" + suite_id + label + ikm, "sha256")


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = struct.pack(">H", length) + b"HPKE-v1" + suite_id + label + info
    return HKDFExpand(SHA256(), length, labeled_info).derive(prk)


def _kem_shared_secret(dh: bytes, kem_context: bytes) -> bytes:
    eae_prk = _labeled_extract(_KEM_SUITE_ID, b"", b"eae_prk", dh)
    return _labeled_expand(_KEM_SUITE_ID, eae_prk, b"shared_secret", kem_context, 32)


def _key_schedule(mode: int, shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
    """(key, base_nonce) for a mode without PSK (RFC 9180 §5.1)."""
    sid = _HPKE_SUITE_ID
    psk_id_hash = _labeled_extract(sid, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(sid, b"", b"info_hash", info)
    context = bytes([mode]) + psk_id_hash + info_hash
    secret = _labeled_extract(sid, shared_secret, b"secret", b"")
    return (
        _labeled_expand(sid, secret, b"key", context, 32),
        _labeled_expand(sid, secret, b"base_nonce", context, 12),
    )


def _hpke_seal_auth(
    recipient: X25519PublicKey, sender: X25519PrivateKey, info: bytes, plaintext: bytes
) -> tuple[bytes, bytes]:
    """AuthEncap + single-shot Seal (sequence 0): returns (enc, ciphertext)."""
    ephemeral = X25519PrivateKey.generate()
    enc = _raw(ephemeral.public_key())
    dh = ephemeral.exchange(recipient) + sender.exchange(recipient)
    kem_context = enc + _raw(recipient) + _raw(sender.public_key())
    key, nonce = _key_schedule(MODE_AUTH, _kem_shared_secret(dh, kem_context), info)
    return enc, AESGCM(key).encrypt(nonce, plaintext, b"")


def _hpke_open(
    mode: int,
    enc: bytes,
    recipient: X25519PrivateKey,
    sender: X25519PublicKey | None,
    info: bytes,
    ciphertext: bytes,
) -> bytes:
    """Decap (base) or AuthDecap (auth) + single-shot Open; raises InvalidTag/ValueError."""
    ephemeral = X25519PublicKey.from_public_bytes(enc)
    dh = recipient.exchange(ephemeral)
    kem_context = enc + _raw(recipient.public_key())
    if mode == MODE_AUTH:
        assert sender is not None
        dh += recipient.exchange(sender)
        kem_context += _raw(sender)
    key, nonce = _key_schedule(mode, _kem_shared_secret(dh, kem_context), info)
    return AESGCM(key).decrypt(nonce, ciphertext, b"")


# --- sealing ---------------------------------------------------------------------------------
def _wrap_info(analysis_id: str, object_id: str, sender_id: str, recipient_id: str) -> bytes:
    # Length-prefixed so that no two different id tuples give the same bytes.
    parts = [b"fedgrpc/flame/seal/v1"]
    for value in (analysis_id, object_id, sender_id, recipient_id):
        encoded = value.encode()
        parts.append(struct.pack(">I", len(encoded)) + encoded)
    return b"".join(parts)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)


def seal(
    plaintext: bytes,
    *,
    sender: NodeKeys,
    sender_id: str,
    recipients: Mapping[str, bytes],
    analysis_id: str,
    object_id: str,
) -> bytes:
    """Encrypt ``plaintext`` once for every recipient (node id -> its 32-byte public key)."""
    if not recipients:
        raise InvalidArgument("sealing needs at least one recipient node id")
    content_key = secrets.token_bytes(_KEY_LEN)
    digest = hashlib.sha256(plaintext).digest()
    wrapped: dict[str, dict[str, str]] = {}
    for node_id, public in sorted(recipients.items()):
        if not isinstance(node_id, str) or not node_id:
            raise InvalidArgument("recipient node ids must be non-empty strings")
        info = _wrap_info(analysis_id, object_id, sender_id, node_id)
        enc, ct = _hpke_seal_auth(
            _public_key(public, node_id), sender.private_key, info, content_key + digest
        )
        wrapped[node_id] = {"enc": _b64(enc), "key": _b64(ct)}
    nonce = secrets.token_bytes(12)
    header = {
        "v": VERSION,
        "suite": SUITE,
        "analysis_id": analysis_id,
        "object_id": object_id,
        "sender_id": sender_id,
        "nonce": _b64(nonce),
        "recipients": wrapped,
    }
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    prefix = MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes
    return prefix + AESGCM(content_key).encrypt(nonce, plaintext, prefix)


def _parse(blob: bytes) -> tuple[bytes, dict[str, Any], bytes]:
    """(authenticated prefix, header, ciphertext); DecryptionError when not a sealed blob."""
    if not isinstance(blob, bytes | bytearray) or blob[: len(MAGIC)] != MAGIC:
        raise DecryptionError("not a fedgrpc sealed blob")
    start = len(MAGIC) + 4
    if len(blob) < start:
        raise DecryptionError("truncated")
    (length,) = struct.unpack(">I", blob[len(MAGIC) : start])
    if length > _MAX_HEADER or start + length > len(blob):
        raise DecryptionError("bad header length")
    try:
        header = json.loads(bytes(blob[start : start + length]))
    except (ValueError, UnicodeDecodeError):
        raise DecryptionError("unreadable header") from None
    if (
        not isinstance(header, dict)
        or header.get("v") != VERSION
        or header.get("suite") != SUITE
        or not isinstance(header.get("recipients"), dict)
    ):
        raise DecryptionError("unsupported blob version or suite")
    return bytes(blob[: start + length]), header, bytes(blob[start + length :])


def sealed_recipients(blob: bytes) -> list[str]:
    """The node ids a blob was sealed for (read from its header; nothing is decrypted)."""
    return sorted(_parse(blob)[1]["recipients"])


def open_sealed(
    blob: bytes,
    *,
    keys: NodeKeys,
    node_id: str,
    sender_id: str,
    sender_public: bytes,
    analysis_id: str,
    object_id: str,
) -> bytes:
    """The plaintext, or DecryptionError; never returns bytes that did not authenticate."""
    prefix, header, ciphertext = _parse(blob)
    for field, expected in (
        ("analysis_id", analysis_id),
        ("object_id", object_id),
        ("sender_id", sender_id),
    ):
        if header.get(field) != expected:
            raise DecryptionError(f"sealed for another {field.removesuffix('_id')}")
    entry = header["recipients"].get(node_id)
    if not isinstance(entry, dict):
        raise DecryptionError(f"node {node_id!r} is not a recipient")
    try:
        sender_key = _public_key(sender_public, sender_id)
        unwrapped = _hpke_open(
            MODE_AUTH,
            _unb64(entry.get("enc")),
            keys.private_key,
            sender_key,
            _wrap_info(analysis_id, object_id, sender_id, node_id),
            _unb64(entry.get("key")),
        )
        if len(unwrapped) != _KEY_LEN + _HASH_LEN:
            raise ValueError("wrapped key has the wrong length")
        content_key, digest = unwrapped[:_KEY_LEN], unwrapped[_KEY_LEN:]
        plaintext = AESGCM(content_key).decrypt(_unb64(header.get("nonce")), ciphertext, prefix)
    except (InvalidTag, ValueError, binascii.Error, InvalidArgument):
        raise DecryptionError("authentication failed") from None
    if not hmac.compare_digest(hashlib.sha256(plaintext).digest(), digest):
        raise DecryptionError("content does not match what the sender sealed")
    return plaintext
