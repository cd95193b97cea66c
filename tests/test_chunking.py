"""Chunked streams: splitting, reassembly, and the limits and checks enforced on the way in."""

from __future__ import annotations

import hashlib
import os

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgrpc.errors import (
    ChecksumMismatch,
    FailedPrecondition,
    InvalidArgument,
    PayloadTooLarge,
    TruncatedStream,
)
from fedgrpc.model import DEFAULT_CHUNK_SIZE, ChunkAssembler, StreamVerifier, iter_chunks
from fedgrpc.model.chunking import SHA256, model_digest, sha256_hex

PAYLOAD = os.urandom(10_000)
PAYLOAD_DIGEST = blake3.blake3(PAYLOAD).hexdigest()


def reassemble(chunks: list[bytes] | list[memoryview], **header: object) -> bytes:
    assembler = ChunkAssembler(**header)  # type: ignore[arg-type]
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.finish()


def test_default_chunk_size_fits_grpc_default_message_limit() -> None:
    assert DEFAULT_CHUNK_SIZE == 1024 * 1024
    assert DEFAULT_CHUNK_SIZE < 4 * 1024 * 1024


def test_model_digests_are_blake3_and_sha256_hex_is_hashlibs() -> None:
    assert model_digest(PAYLOAD) == PAYLOAD_DIGEST
    assert model_digest(memoryview(PAYLOAD)) == PAYLOAD_DIGEST
    # BLAKE3's published test vector for the empty input.
    assert model_digest(b"") == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert sha256_hex(PAYLOAD) == hashlib.sha256(PAYLOAD).hexdigest()
    assert sha256_hex(b"") == hashlib.sha256(b"").hexdigest()


def test_a_sha256_stream_is_checked_with_sha256() -> None:
    verifier = StreamVerifier(expected_digest=sha256_hex(PAYLOAD), algorithm=SHA256)
    verifier.update(PAYLOAD)
    verifier.finish()
    assert verifier.digest == hashlib.sha256(PAYLOAD).hexdigest()
    as_blake3 = StreamVerifier(expected_digest=sha256_hex(PAYLOAD))
    as_blake3.update(PAYLOAD)
    with pytest.raises(ChecksumMismatch, match="blake3 mismatch"):
        as_blake3.finish()


@pytest.mark.parametrize("chunk_size", [1, 7, 1000, 1024, 3333, 10_000, 10_001, DEFAULT_CHUNK_SIZE])
def test_chunks_round_trip_including_sizes_that_do_not_divide_the_payload(chunk_size: int) -> None:
    chunks = list(iter_chunks(PAYLOAD, chunk_size))
    assert all(len(chunk) == chunk_size for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= chunk_size
    assert len(chunks) == -(-len(PAYLOAD) // chunk_size)
    result = reassemble(chunks, expected_size=len(PAYLOAD), expected_digest=PAYLOAD_DIGEST)
    assert result == PAYLOAD
    assert isinstance(result, bytes)
    assert reassemble(chunks) == PAYLOAD


def test_iter_chunks_is_zero_copy() -> None:
    data = bytearray(b"abcdef")
    chunks = list(iter_chunks(data, 4))
    assert all(isinstance(chunk, memoryview) for chunk in chunks)
    data[0] = ord("z")
    assert bytes(chunks[0]) == b"zbcd"


def test_iter_chunks_of_empty_payload_yields_nothing() -> None:
    assert list(iter_chunks(b"")) == []
    assert reassemble([], expected_size=0, expected_digest=model_digest(b"")) == b""


@pytest.mark.parametrize("chunk_size", [0, -1])
def test_non_positive_chunk_size_is_refused_on_call(chunk_size: int) -> None:
    with pytest.raises(InvalidArgument, match=str(chunk_size)):
        iter_chunks(PAYLOAD, chunk_size)


def test_truncated_stream_names_both_sizes() -> None:
    chunks = list(iter_chunks(PAYLOAD, 1000))[:-1]
    with pytest.raises(TruncatedStream, match=r"after 9000 bytes.*10000 bytes"):
        reassemble(chunks, expected_size=len(PAYLOAD))


def test_a_wrong_digest_names_both_digests() -> None:
    wrong = model_digest(b"something else")
    with pytest.raises(ChecksumMismatch) as caught:
        reassemble(list(iter_chunks(PAYLOAD, 1000)), expected_digest=wrong)
    assert wrong in str(caught.value)
    assert PAYLOAD_DIGEST in str(caught.value)


def test_corrupted_chunk_is_a_checksum_mismatch() -> None:
    chunks = [bytes(chunk) for chunk in iter_chunks(PAYLOAD, 1000)]
    chunks[3] = bytes([chunks[3][0] ^ 1]) + chunks[3][1:]
    with pytest.raises(ChecksumMismatch):
        reassemble(chunks, expected_size=len(PAYLOAD), expected_digest=PAYLOAD_DIGEST)


def test_uppercase_expected_sha_is_accepted() -> None:
    chunks = list(iter_chunks(PAYLOAD, 4096))
    assert reassemble(chunks, expected_digest=PAYLOAD_DIGEST.upper()) == PAYLOAD


@pytest.mark.parametrize("limit_field", ["max_size", "expected_size"])
def test_payload_too_large_raised_by_the_add_that_crosses_the_limit(limit_field: str) -> None:
    assembler = ChunkAssembler(**{limit_field: 2500})  # type: ignore[arg-type]
    assembler.add(b"a" * 1000)
    assembler.add(b"b" * 1000)
    assembler.add(b"c" * 500)  # exactly at the limit is fine
    with pytest.raises(PayloadTooLarge, match=r"2501 bytes.*2500 bytes"):
        assembler.add(b"d")
    assert assembler.received == 2500


def test_announced_size_over_the_limit_is_refused_before_any_chunk() -> None:
    with pytest.raises(PayloadTooLarge, match=r"announces 101 bytes.*100 bytes"):
        ChunkAssembler(expected_size=101, max_size=100)


@pytest.mark.parametrize(
    "header",
    [
        {"expected_size": -1},
        {"max_size": -5},
        {"expected_digest": ""},
        {"expected_digest": "abc"},
        {"expected_digest": "g" * 64},
    ],
)
def test_invalid_header_values_are_invalid_argument(header: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        ChunkAssembler(**header)  # type: ignore[arg-type]


def test_received_and_running_digest() -> None:
    assembler = ChunkAssembler(expected_size=len(PAYLOAD))
    assembler.add(PAYLOAD[:4000])
    assert assembler.received == 4000
    assert assembler.digest == model_digest(PAYLOAD[:4000])
    assembler.add(PAYLOAD[4000:])
    assembler.finish()
    assert assembler.digest == PAYLOAD_DIGEST


def test_mutable_chunks_are_copied_on_add() -> None:
    reused = bytearray(b"x" * 100_000)
    assembler = ChunkAssembler()
    assembler.add(reused)
    assembler.add(memoryview(reused)[:10])
    reused[:] = b"y" * len(reused)
    assert assembler.finish() == b"x" * 100_010


def test_tiny_chunks_are_coalesced() -> None:
    data = os.urandom(200_000)
    assembler = ChunkAssembler(expected_size=len(data), expected_digest=model_digest(data))
    for chunk in iter_chunks(data, 3):
        assembler.add(chunk)
    assert assembler.finish() == data


def test_no_adds_after_finish() -> None:
    assembler = ChunkAssembler()
    assembler.add(b"abc")
    assert assembler.finish() == b"abc"
    with pytest.raises(FailedPrecondition):
        assembler.add(b"d")


def test_stream_verifier_checks_without_keeping_the_payload() -> None:
    verifier = StreamVerifier(expected_size=len(PAYLOAD), expected_digest=PAYLOAD_DIGEST)
    for chunk in iter_chunks(PAYLOAD, 999):
        verifier.update(chunk)
    verifier.finish()
    assert verifier.received == len(PAYLOAD)
    assert verifier.digest == PAYLOAD_DIGEST


@settings(max_examples=150, deadline=None)
@given(
    payload=st.binary(max_size=5000),
    chunk_size=st.integers(min_value=1, max_value=6000),
    announce=st.booleans(),
)
def test_any_chunk_size_round_trips(payload: bytes, chunk_size: int, announce: bool) -> None:
    chunks = list(iter_chunks(payload, chunk_size))
    assert b"".join(chunks) == payload
    header = {"expected_size": len(payload), "expected_digest": model_digest(payload)}
    assert reassemble(chunks, **(header if announce else {})) == payload


@settings(max_examples=100, deadline=None)
@given(
    payload=st.binary(min_size=1, max_size=3000),
    chunk_size=st.integers(min_value=1, max_value=500),
    data=st.data(),
)
def test_limit_is_hit_exactly_at_the_crossing_chunk(
    payload: bytes, chunk_size: int, data: st.DataObject
) -> None:
    limit = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    assembler = ChunkAssembler(max_size=limit)
    accepted = 0
    for chunk in iter_chunks(payload, chunk_size):
        if accepted + len(chunk) > limit:
            with pytest.raises(PayloadTooLarge):
                assembler.add(chunk)
            break
        assembler.add(chunk)
        accepted += len(chunk)
    else:
        pytest.fail("the payload is larger than the limit, so some add() must have failed")
    assert assembler.received == accepted
