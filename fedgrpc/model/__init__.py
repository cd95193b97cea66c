"""Model bytes: safetensors serialization of named numpy arrays, and chunked streaming."""

from fedgrpc.model.chunking import (
    DEFAULT_CHUNK_SIZE,
    ChunkAssembler,
    StreamVerifier,
    iter_chunks,
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
    "DEFAULT_CHUNK_SIZE",
    "SUPPORTED_DTYPES",
    "ChunkAssembler",
    "StreamVerifier",
    "dump_model",
    "iter_chunks",
    "list_to_named",
    "load_model",
    "load_model_list",
    "named_to_list",
    "sha256_hex",
]
