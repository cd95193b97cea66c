"""Model bytes: safetensors serialization of named numpy arrays, and chunked streaming."""

from fedgrpc.model.chunking import (
    BLAKE3,
    DEFAULT_CHUNK_SIZE,
    SHA256,
    ChunkAssembler,
    DigestAlgorithm,
    StreamVerifier,
    iter_chunks,
    model_digest,
    sha256_hex,
)
from fedgrpc.model.serialization import (
    SUPPORTED_DTYPES,
    dump_model,
    list_to_named,
    load_model,
    load_model_list,
    named_to_list,
)

__all__ = [
    "BLAKE3",
    "DEFAULT_CHUNK_SIZE",
    "SHA256",
    "SUPPORTED_DTYPES",
    "ChunkAssembler",
    "DigestAlgorithm",
    "StreamVerifier",
    "dump_model",
    "iter_chunks",
    "list_to_named",
    "load_model",
    "load_model_list",
    "model_digest",
    "named_to_list",
    "sha256_hex",
]
