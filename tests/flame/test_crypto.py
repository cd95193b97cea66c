"""Sealed intermediate data: roundtrips, every kind of tamper, binding, and the node key file."""

from __future__ import annotations

import json
import os
import stat
import struct

import grpc
import pytest
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from fedgrpc.errors import InvalidArgument, error_for_status, status_for
from fedgrpc.flame import crypto
from fedgrpc.flame.crypto import (
    DecryptionError,
    NodeKeys,
    open_sealed,
    seal,
    sealed_recipients,
)

ANALYSIS = "analysis-1"
OBJECT = "object-1"


@pytest.fixture(scope="module")
def nodes() -> dict[str, NodeKeys]:
    return {name: NodeKeys.generate() for name in ("sender", "n1", "n2", "n3", "outsider")}


def _seal(nodes: dict[str, NodeKeys], plaintext: bytes = b"federated mean: 42.5") -> bytes:
    return seal(
        plaintext,
        sender=nodes["sender"],
        sender_id="sender",
        recipients={n: nodes[n].public_bytes for n in ("n1", "n2", "n3")},
        analysis_id=ANALYSIS,
        object_id=OBJECT,
    )


def _open(nodes: dict[str, NodeKeys], blob: bytes, node: str = "n1", **over: object) -> bytes:
    kwargs: dict[str, object] = {
        "keys": nodes[node],
        "node_id": node,
        "sender_id": "sender",
        "sender_public": nodes["sender"].public_bytes,
        "analysis_id": ANALYSIS,
        "object_id": OBJECT,
    }
    kwargs.update(over)
    return open_sealed(blob, **kwargs)  # type: ignore[arg-type]


def test_roundtrip_to_three_recipients(nodes: dict[str, NodeKeys]) -> None:
    plaintext = os.urandom(5000)
    blob = _seal(nodes, plaintext)
    assert sealed_recipients(blob) == ["n1", "n2", "n3"]
    for node in ("n1", "n2", "n3"):
        assert _open(nodes, blob, node) == plaintext
    # The ciphertext is carried once, not once per recipient.
    assert len(blob) < len(plaintext) + 2000


def test_fresh_content_key_per_object(nodes: dict[str, NodeKeys]) -> None:
    assert _seal(nodes, b"same") != _seal(nodes, b"same")


def test_empty_plaintext_roundtrips(nodes: dict[str, NodeKeys]) -> None:
    assert _open(nodes, _seal(nodes, b"")) == b""


def test_non_recipient_fails(nodes: dict[str, NodeKeys]) -> None:
    blob = _seal(nodes)
    with pytest.raises(DecryptionError, match="not meant for this node"):
        _open(nodes, blob, "outsider")
    # An outsider claiming a recipient's id still lacks that recipient's private key.
    with pytest.raises(DecryptionError):
        _open(nodes, blob, "outsider", node_id="n1")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("analysis_id", "analysis-2"),
        ("object_id", "object-2"),
        ("sender_id", "n2"),
    ],
)
def test_wrong_binding_fails(nodes: dict[str, NodeKeys], field: str, value: str) -> None:
    with pytest.raises(DecryptionError):
        _open(nodes, _seal(nodes), **{field: value})


def test_wrong_sender_key_fails(nodes: dict[str, NodeKeys]) -> None:
    with pytest.raises(DecryptionError):
        _open(nodes, _seal(nodes), sender_public=nodes["n2"].public_bytes)


def test_blob_from_another_sender_fails(nodes: dict[str, NodeKeys]) -> None:
    # n2 seals for n1 but labels itself "sender": n1 checks against the real sender's key.
    forged = seal(
        b"forged",
        sender=nodes["n2"],
        sender_id="sender",
        recipients={"n1": nodes["n1"].public_bytes},
        analysis_id=ANALYSIS,
        object_id=OBJECT,
    )
    with pytest.raises(DecryptionError):
        _open(nodes, forged)


def test_every_flipped_bit_fails_for_every_recipient(nodes: dict[str, NodeKeys]) -> None:
    blob = _seal(nodes, b"x" * 64)
    for index in range(len(blob)):
        for bit in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[index] ^= bit
            for node in ("n1", "n3"):
                with pytest.raises(DecryptionError):
                    _open(nodes, bytes(tampered), node)


def test_truncated_and_extended_blobs_fail(nodes: dict[str, NodeKeys]) -> None:
    blob = _seal(nodes)
    for cut in (0, 4, len(crypto.MAGIC) + 2, len(blob) // 2, len(blob) - 1):
        with pytest.raises(DecryptionError):
            _open(nodes, blob[:cut])
    with pytest.raises(DecryptionError):
        _open(nodes, blob + b"\x00")


def _header(blob: bytes) -> tuple[dict[str, object], bytes]:
    start = len(crypto.MAGIC) + 4
    (length,) = struct.unpack(">I", blob[len(crypto.MAGIC) : start])
    return json.loads(blob[start : start + length]), blob[start + length :]


def _rebuild(header: dict[str, object], ciphertext: bytes) -> bytes:
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return crypto.MAGIC + struct.pack(">I", len(raw)) + raw + ciphertext


def test_recipient_cannot_reuse_wraps_to_forge_content(nodes: dict[str, NodeKeys]) -> None:
    """n1 knows the content key; re-encrypting other content under it must not fool n2."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    blob = _seal(nodes, b"genuine")
    header, _ = _header(blob)
    recipients = header["recipients"]
    assert isinstance(recipients, dict)
    enc = crypto._unb64(recipients["n1"]["enc"])
    wrapped = crypto._unb64(recipients["n1"]["key"])
    info = crypto._wrap_info(ANALYSIS, OBJECT, "sender", "n1")
    unwrapped = crypto._hpke_open(
        crypto.MODE_AUTH,
        enc,
        nodes["n1"].private_key,
        nodes["sender"].private_key.public_key(),
        info,
        wrapped,
    )
    content_key = unwrapped[:32]
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    prefix = crypto.MAGIC + struct.pack(">I", len(raw)) + raw
    nonce = crypto._unb64(header["nonce"])
    forged = prefix + AESGCM(content_key).encrypt(nonce, b"forged!", prefix)
    with pytest.raises(DecryptionError, match="does not match"):
        _open(nodes, forged, "n2")


def test_swapped_wrap_entries_fail(nodes: dict[str, NodeKeys]) -> None:
    header, ciphertext = _header(_seal(nodes))
    recipients = header["recipients"]
    assert isinstance(recipients, dict)
    recipients["n1"], recipients["n2"] = recipients["n2"], recipients["n1"]
    with pytest.raises(DecryptionError):
        _open(nodes, _rebuild(header, ciphertext))


@pytest.mark.parametrize("blob", [b"", b"garbage", b"FGSEAL1\n\xff\xff\xff\xff"])
def test_garbage_is_a_decryption_error(nodes: dict[str, NodeKeys], blob: bytes) -> None:
    with pytest.raises(DecryptionError):
        _open(nodes, blob)
    with pytest.raises(DecryptionError):
        sealed_recipients(blob)


def test_seal_rejects_bad_input(nodes: dict[str, NodeKeys]) -> None:
    with pytest.raises(InvalidArgument, match="at least one recipient"):
        seal(
            b"x",
            sender=nodes["sender"],
            sender_id="s",
            recipients={},
            analysis_id="a",
            object_id="o",
        )
    with pytest.raises(InvalidArgument, match="32 raw"):
        seal(
            b"x",
            sender=nodes["sender"],
            sender_id="s",
            recipients={"n": b"short"},
            analysis_id="a",
            object_id="o",
        )


def test_decryption_error_maps_to_data_loss() -> None:
    err = DecryptionError("x")
    assert status_for(err) == grpc.StatusCode.DATA_LOSS
    assert "ciphertext was tampered with or not meant for this node" in str(err)
    # The generic class still comes back for DATA_LOSS from a remote peer.
    assert error_for_status(grpc.StatusCode.DATA_LOSS).__name__ == "DataLoss"


def test_key_schedule_matches_library_hpke_base_mode(nodes: dict[str, NodeKeys]) -> None:
    """Our RFC 9180 key schedule opens what cryptography's own HPKE (base mode) sealed."""
    suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
    recipient = nodes["n1"].private_key
    info = b"fedgrpc interop"
    sealed = suite.encrypt(b"interop plaintext", recipient.public_key(), info)
    enc, ciphertext = sealed[:32], sealed[32:]
    assert (
        crypto._hpke_open(crypto.MODE_BASE, enc, recipient, None, info, ciphertext)
        == b"interop plaintext"
    )


def test_key_file_created_private_and_reused(tmp_path) -> None:
    directory = tmp_path / "node"
    first = NodeKeys.load_or_create(directory)
    path = directory / crypto.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in path.read_bytes()
    assert len(first.public_bytes) == 32
    again = NodeKeys.load_or_create(directory)
    assert again.public_bytes == first.public_bytes
    assert [p.name for p in directory.iterdir()] == [crypto.KEY_FILE]  # no temp files left


def test_key_file_readable_by_others_is_refused(tmp_path) -> None:
    NodeKeys.load_or_create(tmp_path)
    os.chmod(tmp_path / crypto.KEY_FILE, 0o644)
    with pytest.raises(InvalidArgument, match="chmod 600"):
        NodeKeys.load_or_create(tmp_path)


def test_key_file_of_the_wrong_kind_is_refused(tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / crypto.KEY_FILE
    path.write_bytes(pem)
    os.chmod(path, 0o600)
    with pytest.raises(InvalidArgument, match="not an X25519 key"):
        NodeKeys.load_or_create(tmp_path)
