"""One contract suite run against every model store backend, plus backend specifics.

``StoreContract`` holds the tests; each backend subclass supplies ``make_store`` (a store on a
fresh location, optionally with a size limit) and ``leftovers`` (what a failed put might have
left behind: temp files, orphan GridFS chunks). The GridFS class runs once per Mongo target.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
import pymongo
import pytest
from pymongo.database import Database

from fedgrpc.errors import (
    AlreadyExists,
    ChecksumMismatch,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    TruncatedStream,
    Unavailable,
)
from fedgrpc.model import SHA256, iter_chunks, model_digest, sha256_hex
from fedgrpc.modelstore import (
    SMALL_MODEL_BYTES,
    DirectoryModelStore,
    EmbeddedModelStore,
    GridFSModelStore,
    ModelStore,
    StoredModel,
    create_model_store,
)
from fedgrpc.statestore import StateStore, open_statestore

StoreFactory = Callable[..., ModelStore]

# pymongo's GridFS buffers up to 48 MB of chunks client-side before inserting them; failing
# after more than that proves an abort also removes chunks that already reached the server.
PAST_GRIDFS_UPLOAD_BUFFER = 50 * 1024 * 1024

INVALID_IDS = ["", "../x", "a/b", "..", ".", ".hidden", "a\\b", "a b", "ü", "x\n", "a" * 129]


class StreamDroppedError(Exception):
    """Stands in for a gRPC stream that breaks off mid-upload."""


def payload_of(size: int, seed: int = 0) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]


def dropping_stream(first: bytes, sent_before_drop: int) -> Iterator[bytes]:
    for chunk in iter_chunks(first[:sent_before_drop], 1024 * 1024):
        yield bytes(chunk)
    raise StreamDroppedError("client went away")


class RefusingStream:
    """A chunk iterator for puts that must fail before reading a single chunk."""

    def __iter__(self) -> RefusingStream:
        return self

    def __next__(self) -> bytes:
        raise AssertionError("the stream must not be read at all")


def hidden_files(root: Path) -> list[str]:
    """What a failed directory put might have left behind: its hidden temp files."""
    return sorted(path.name for path in root.iterdir() if path.name[0] == ".")


class StoreContract:
    @pytest.fixture
    def make_store(self) -> StoreFactory:
        raise NotImplementedError

    @pytest.fixture
    def leftovers(self) -> Callable[[], list[Any]]:
        raise NotImplementedError

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> Iterator[ModelStore]:
        with make_store() as created:
            yield created

    def assert_nothing_stored(
        self, store: ModelStore, model_id: str, leftovers: Callable[[], list[Any]]
    ) -> None:
        assert not store.exists(model_id)
        with pytest.raises(NotFound):
            store.size(model_id)
        with pytest.raises(NotFound):
            store.get(model_id)
        with pytest.raises(NotFound):
            store.get_bytes(model_id)
        assert leftovers() == []

    # --- basics ---------------------------------------------------------------------------------
    def test_put_get_exists_size_delete(self, store: ModelStore) -> None:
        data = payload_of(5000)
        assert not store.exists("m1")
        stored = store.put("m1", [data[:1000], data[1000:]])
        assert stored == StoredModel(model_id="m1", size=5000, digest=model_digest(data))
        assert store.exists("m1")
        assert store.size("m1") == 5000
        assert b"".join(store.get("m1")) == data
        assert store.delete("m1") is True
        assert not store.exists("m1")
        assert store.delete("m1") is False

    def test_put_bytes_and_get_bytes(self, store: ModelStore) -> None:
        data = payload_of(3000, seed=1)
        assert store.put_bytes("m.v1_final-2", data).size == 3000
        assert store.get_bytes("m.v1_final-2") == data

    def test_empty_model(self, store: ModelStore) -> None:
        store.put("empty", [], expected_size=0, expected_digest=model_digest(b""))
        assert store.exists("empty")
        assert store.size("empty") == 0
        assert store.get_bytes("empty") == b""

    def test_copy_stores_the_same_bytes_under_a_new_id_independently(
        self, store: ModelStore
    ) -> None:
        data = payload_of(30_000, seed=2)
        store.put_bytes("partial-1", data, durable=False)
        stored = store.copy("partial-1", "model-1")
        assert stored == StoredModel(model_id="model-1", size=30_000, digest=model_digest(data))
        assert store.delete("partial-1")
        assert store.get_bytes("model-1") == data

    def test_copy_records_a_digest_the_caller_verified(self, store: ModelStore) -> None:
        store.put_bytes("partial-2", b"abc")
        assert store.copy("partial-2", "m2", verified_digest="f" * 64).digest == "f" * 64

    def test_copy_refuses_a_missing_source_and_an_existing_target(
        self, store: ModelStore, leftovers: Callable[[], list[Any]]
    ) -> None:
        with pytest.raises(NotFound, match="nope"):
            store.copy("nope", "m3")
        assert not store.exists("m3")
        store.put_bytes("a", b"from a")
        store.put_bytes("b", b"from b")
        with pytest.raises(AlreadyExists, match="b"):
            store.copy("a", "b")
        assert store.get_bytes("b") == b"from b"
        assert leftovers() == []

    @pytest.mark.parametrize("chunk_size", [1, 1000, 4096, 10_000, 10_001])
    def test_get_streams_chunks_of_the_requested_size(
        self, store: ModelStore, chunk_size: int
    ) -> None:
        data = payload_of(10_000, seed=2)
        store.put_bytes("streamed", data)
        chunks = list(store.get("streamed", chunk_size=chunk_size))
        assert all(len(chunk) == chunk_size for chunk in chunks[:-1])
        assert 0 < len(chunks[-1]) <= chunk_size
        assert b"".join(chunks) == data

    def test_get_of_missing_model_raises_on_call(self, store: ModelStore) -> None:
        with pytest.raises(NotFound, match="nope"):
            store.get("nope")  # no next(): the error must not wait for iteration
        with pytest.raises(NotFound, match="nope"):
            store.size("nope")
        with pytest.raises(NotFound):
            store.get_bytes("nope")

    def test_get_refuses_non_positive_chunk_size(self, store: ModelStore) -> None:
        store.put_bytes("m", b"abc")
        with pytest.raises(InvalidArgument, match="chunk_size"):
            store.get("m", chunk_size=0)

    def test_deleted_id_can_be_reused(self, store: ModelStore) -> None:
        store.put_bytes("reused", b"first")
        assert store.delete("reused")
        store.put_bytes("reused", b"second")
        assert store.get_bytes("reused") == b"second"

    def test_duplicate_id_is_refused_and_keeps_the_original(
        self, store: ModelStore, leftovers: Callable[[], list[Any]]
    ) -> None:
        store.put_bytes("dup", b"original")
        with pytest.raises(AlreadyExists, match="dup"):
            store.put_bytes("dup", b"replacement")
        with pytest.raises(AlreadyExists):
            store.put("dup", RefusingStream())
        assert store.get_bytes("dup") == b"original"
        assert leftovers() == []

    # --- ids ------------------------------------------------------------------------------------
    @pytest.mark.parametrize("bad_id", INVALID_IDS)
    def test_invalid_ids_are_refused_everywhere(self, store: ModelStore, bad_id: str) -> None:
        with pytest.raises(InvalidArgument, match="invalid model id"):
            store.put(bad_id, RefusingStream())
        for operation in (store.get, store.exists, store.size, store.delete):
            with pytest.raises(InvalidArgument, match="invalid model id"):
                operation(bad_id)

    def test_longest_valid_id(self, store: ModelStore) -> None:
        longest = "a" * 128
        store.put_bytes(longest, b"x")
        assert store.get_bytes(longest) == b"x"

    # --- failed puts leave nothing ---------------------------------------------------------------
    def test_size_limit(self, make_store: StoreFactory, leftovers: Callable[[], list[Any]]) -> None:
        store = make_store(max_size=10_000)
        store.put_bytes("at-limit", payload_of(10_000))
        with pytest.raises(PayloadTooLarge, match="10000"):
            store.put("over", iter_chunks(payload_of(10_001), 1000))
        self.assert_nothing_stored(store, "over", leftovers)

    def test_announced_size_over_limit_is_refused_before_reading(
        self, make_store: StoreFactory, leftovers: Callable[[], list[Any]]
    ) -> None:
        store = make_store(max_size=100)
        with pytest.raises(PayloadTooLarge, match="announces 101 bytes"):
            store.put("big", RefusingStream(), expected_size=101)
        self.assert_nothing_stored(store, "big", leftovers)

    def test_wrong_expected_digest(
        self, store: ModelStore, leftovers: Callable[[], list[Any]]
    ) -> None:
        data = payload_of(4000)
        with pytest.raises(ChecksumMismatch, match=model_digest(data)):
            store.put("m", iter_chunks(data, 1000), expected_digest=model_digest(b"other"))
        self.assert_nothing_stored(store, "m", leftovers)

    def test_a_sha256_put_for_packages_and_objects(
        self, store: ModelStore, leftovers: Callable[[], list[Any]]
    ) -> None:
        data = payload_of(4000)
        stored = store.put_bytes("package", data, algorithm=SHA256)
        assert stored.digest == sha256_hex(data)
        with pytest.raises(ChecksumMismatch, match="sha256 mismatch"):
            store.put("m", [data], expected_digest=model_digest(data), algorithm=SHA256)
        self.assert_nothing_stored(store, "m", leftovers)

    def test_stream_shorter_than_announced(
        self, store: ModelStore, leftovers: Callable[[], list[Any]]
    ) -> None:
        with pytest.raises(TruncatedStream, match=r"3000 bytes.*4000 bytes"):
            store.put("m", iter_chunks(payload_of(3000), 1000), expected_size=4000)
        self.assert_nothing_stored(store, "m", leftovers)

    def test_stream_longer_than_announced(
        self, store: ModelStore, leftovers: Callable[[], list[Any]]
    ) -> None:
        with pytest.raises(PayloadTooLarge, match="announced"):
            store.put("m", iter_chunks(payload_of(5000), 1000), expected_size=4000)
        self.assert_nothing_stored(store, "m", leftovers)

    @pytest.mark.parametrize("sent_before_drop", [0, 1500, PAST_GRIDFS_UPLOAD_BUFFER])
    def test_stream_that_raises_midway(
        self, store: ModelStore, leftovers: Callable[[], list[Any]], sent_before_drop: int
    ) -> None:
        data = payload_of(sent_before_drop)
        with pytest.raises(StreamDroppedError):
            store.put("m", dropping_stream(data, sent_before_drop))
        self.assert_nothing_stored(store, "m", leftovers)
        store.put_bytes("m", b"retry works")
        assert store.get_bytes("m") == b"retry works"

    # --- concurrency and size ---------------------------------------------------------------------
    def test_concurrent_puts_of_different_ids(
        self, store: ModelStore, leftovers: Callable[[], list[Any]]
    ) -> None:
        payloads = {f"model-{index}": payload_of(50_000 + index, seed=index) for index in range(24)}

        def upload(model_id: str) -> StoredModel:
            return store.put(model_id, iter_chunks(payloads[model_id], 7000))

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(upload, payloads))
        assert [result.model_id for result in results] == list(payloads)
        for model_id, data in payloads.items():
            assert store.get_bytes(model_id) == data
        assert leftovers() == []

    def test_racing_puts_of_one_id_store_exactly_one(
        self, store: ModelStore, leftovers: Callable[[], list[Any]]
    ) -> None:
        racers = 4
        # Every upload passes the existence check and sends a chunk before any may finish,
        # so the atomic publish alone has to pick the winner.
        all_started = threading.Barrier(racers, timeout=60)
        payloads = [payload_of(20_000, seed=index) for index in range(racers)]

        def racing_stream(data: bytes) -> Iterator[bytes]:
            yield data[:10_000]
            all_started.wait()
            yield data[10_000:]

        def upload(data: bytes) -> str:
            try:
                store.put("contested", racing_stream(data))
            except AlreadyExists:
                return "lost"
            return "won"

        with ThreadPoolExecutor(max_workers=racers) as pool:
            outcomes = list(pool.map(upload, payloads))
        assert sorted(outcomes) == ["lost"] * (racers - 1) + ["won"]
        assert store.get_bytes("contested") == payloads[outcomes.index("won")]
        assert leftovers() == []

    def test_20_mb_model_round_trip(self, store: ModelStore) -> None:
        data = os.urandom(20 * 1024 * 1024)
        stored = store.put(
            "big",
            (bytes(chunk) for chunk in iter_chunks(data)),
            expected_size=len(data),
            expected_digest=model_digest(data),
        )
        assert stored.size == len(data)
        assert store.size("big") == len(data)
        received = blake3.blake3()
        for chunk in store.get("big"):
            received.update(chunk)
        assert received.hexdigest() == stored.digest == model_digest(data)


class TestDirectoryModelStore(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        def make(max_size: int | None = None) -> ModelStore:
            return DirectoryModelStore(tmp_path / "models", max_size=max_size)

        return make

    @pytest.fixture
    def leftovers(self, tmp_path: Path) -> Callable[[], list[Any]]:
        return lambda: hidden_files(tmp_path / "models")

    def test_models_are_plain_files_named_by_id(self, store: ModelStore, tmp_path: Path) -> None:
        store.put_bytes("m1", b"content")
        assert (tmp_path / "models" / "m1").read_bytes() == b"content"
        assert sorted(path.name for path in (tmp_path / "models").iterdir()) == ["m1"]

    def test_nothing_is_written_outside_the_root(self, store: ModelStore, tmp_path: Path) -> None:
        for bad_id in ("../escaped", "/tmp/escaped", "sub/../../escaped"):
            with pytest.raises(InvalidArgument):
                store.put_bytes(bad_id, b"x")
        assert sorted(path.name for path in tmp_path.iterdir()) == ["models"]


class TestEmbeddedModelStore(StoreContract):
    """Run with the default limit (the contract's payloads up to 30 kB are rows, the 20 MB one
    a file) and with a 16-byte limit (almost everything a file, each registered by a row)."""

    @pytest.fixture(params=[SMALL_MODEL_BYTES, 16], ids=["rows", "files"])
    def small_limit(self, request: pytest.FixtureRequest) -> int:
        return int(request.param)

    @pytest.fixture
    def statestore(self, tmp_path: Path) -> Iterator[StateStore]:
        with open_statestore(data_dir=tmp_path) as opened:
            yield opened

    @pytest.fixture
    def make_store(self, tmp_path: Path, statestore: StateStore, small_limit: int) -> StoreFactory:
        def make(max_size: int | None = None) -> ModelStore:
            assert statestore.sqlite_backend is not None
            files = DirectoryModelStore(tmp_path / "models", max_size=max_size)
            return EmbeddedModelStore(statestore.sqlite_backend, files, small_limit=small_limit)

        return make

    @pytest.fixture
    def leftovers(self, tmp_path: Path) -> Callable[[], list[Any]]:
        return lambda: hidden_files(tmp_path / "models")


class TestEmbeddedModelStoreTiers:
    @pytest.fixture
    def statestore(self, tmp_path: Path) -> Iterator[StateStore]:
        with open_statestore(data_dir=tmp_path) as opened:
            yield opened

    @pytest.fixture
    def store(self, tmp_path: Path, statestore: StateStore) -> EmbeddedModelStore:
        assert statestore.sqlite_backend is not None
        files = DirectoryModelStore(tmp_path / "models")
        return EmbeddedModelStore(statestore.sqlite_backend, files, small_limit=1000)

    def files(self, tmp_path: Path) -> list[str]:
        return sorted(path.name for path in (tmp_path / "models").iterdir())

    def test_small_models_are_rows_and_large_ones_files(
        self, store: EmbeddedModelStore, tmp_path: Path
    ) -> None:
        store.put_bytes("small", payload_of(1000))
        store.put("streamed-large", iter_chunks(payload_of(3000), 400))  # size not announced
        store.put_bytes("announced-large", payload_of(1001))
        assert self.files(tmp_path) == ["announced-large", "streamed-large"]
        assert store.get_bytes("streamed-large") == payload_of(3000)
        assert store.size("small") == 1000
        assert store.size("announced-large") == 1001
        assert store.delete("announced-large")
        assert self.files(tmp_path) == ["streamed-large"]
        assert not store.exists("announced-large")

    def test_rows_survive_reopening_the_statestore(self, tmp_path: Path) -> None:
        with open_statestore(data_dir=tmp_path) as first:
            assert first.sqlite_backend is not None
            files = DirectoryModelStore(tmp_path / "models")
            EmbeddedModelStore(first.sqlite_backend, files).put_bytes("kept", b"weights")
        with open_statestore(data_dir=tmp_path) as second:
            assert second.sqlite_backend is not None
            reopened = EmbeddedModelStore(second.sqlite_backend, files)
            assert reopened.get_bytes("kept") == b"weights"

    def test_a_file_from_before_this_store_is_found_and_keeps_its_id(
        self, store: EmbeddedModelStore
    ) -> None:
        store.files.put_bytes("legacy", b"old weights")  # a file with no row
        assert store.exists("legacy")
        assert store.size("legacy") == 11
        assert b"".join(store.get("legacy")) == b"old weights"
        with pytest.raises(AlreadyExists):
            store.put_bytes("legacy", b"new")
        assert store.copy("legacy", "copied").size == 11
        assert store.get_bytes("copied") == b"old weights"
        assert store.delete("legacy")
        assert not store.exists("legacy")

    def test_a_large_put_losing_the_id_to_a_small_one_removes_its_file(
        self, store: EmbeddedModelStore, tmp_path: Path
    ) -> None:
        large = payload_of(5000)

        def stream() -> Iterator[bytes]:
            yield large[:2000]
            store.put_bytes("contested", b"small wins")  # while the large one streams
            yield large[2000:]

        with pytest.raises(AlreadyExists, match="contested"):
            store.put("contested", stream(), expected_size=len(large))
        assert store.get_bytes("contested") == b"small wins"
        assert self.files(tmp_path) == []

    def test_a_small_put_losing_the_id_to_a_large_one_leaves_it_alone(
        self, store: EmbeddedModelStore, tmp_path: Path
    ) -> None:
        large = payload_of(5000)

        def stream() -> Iterator[bytes]:
            yield b"small"
            store.put_bytes("contested", large)  # while the small one streams
            yield b" loses"

        with pytest.raises(AlreadyExists, match="contested"):
            store.put("contested", stream())
        assert store.get_bytes("contested") == large
        assert self.files(tmp_path) == ["contested"]

    def test_a_row_written_in_a_statestore_transaction_rolls_back_with_it(
        self, store: EmbeddedModelStore, statestore: StateStore
    ) -> None:
        def put_then_fail() -> None:
            with statestore.transaction():
                store.put_bytes("m", b"weights")
                raise RuntimeError("the record after it failed")

        with pytest.raises(RuntimeError):
            put_then_fail()
        assert not store.exists("m")


class TestGridFSModelStore(StoreContract):
    @pytest.fixture
    def make_store(self, mongo_database: Database[dict[str, object]]) -> StoreFactory:
        def make(max_size: int | None = None) -> ModelStore:
            return GridFSModelStore(mongo_database, max_size=max_size)

        return make

    @pytest.fixture
    def leftovers(self, mongo_database: Database[dict[str, object]]) -> Callable[[], list[Any]]:
        def orphan_chunks() -> list[Any]:
            file_ids = mongo_database["models.files"].distinct("_id")
            orphans = mongo_database["models.chunks"].find(
                {"files_id": {"$nin": file_ids}}, projection={"data": 0}
            )
            return list(orphans)

        return orphan_chunks

    def test_bucket_name_is_configurable(self, mongo_database: Database[dict[str, object]]) -> None:
        store = GridFSModelStore(mongo_database, bucket="weights")
        store.put_bytes("m", b"abc")
        assert mongo_database["weights.files"].count_documents({"filename": "m"}) == 1
        assert mongo_database["models.files"].count_documents({}) == 0
        assert not GridFSModelStore(mongo_database).exists("m")

    def test_the_digest_is_recorded_with_the_file_under_its_algorithm(
        self, store: ModelStore, mongo_database: Database[dict[str, object]]
    ) -> None:
        store.put_bytes("m", b"abc")
        store.put_bytes("package", b"abc", algorithm=SHA256)
        stored = mongo_database["models.files"].find_one({"filename": "m"})
        assert stored is not None
        assert stored["metadata"] == {"blake3": model_digest(b"abc")}
        package = mongo_database["models.files"].find_one({"filename": "package"})
        assert package is not None
        assert package["metadata"] == {"sha256": sha256_hex(b"abc")}


def unreachable_mongo_uri() -> str:
    # A port the OS just handed out and nobody listens on: refused at once, never a fixed port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=300&connectTimeoutMS=300"


def test_gridfs_store_maps_connection_failure_to_unavailable() -> None:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(unreachable_mongo_uri())
    try:
        with pytest.raises(Unavailable, match="MongoDB unreachable"):
            GridFSModelStore(client["fedgrpc_unreachable"])
    finally:
        client.close()


def test_factory_builds_a_directory_store_under_models(tmp_path: Path) -> None:
    store = create_model_store(data_dir=tmp_path, max_size=123)
    assert isinstance(store, DirectoryModelStore)
    assert store.root == tmp_path / "models"
    assert store.max_size == 123
    store.put_bytes("m", b"x")
    assert (tmp_path / "models" / "m").exists()


def test_factory_keeps_small_models_in_the_embedded_statestore(tmp_path: Path) -> None:
    with open_statestore(data_dir=tmp_path) as statestore:
        store = create_model_store(
            data_dir=tmp_path, max_size=123, sqlite=statestore.sqlite_backend
        )
        assert isinstance(store, EmbeddedModelStore)
        assert store.max_size == store.files.max_size == 123
        assert store.files.root == tmp_path / "models"
        store.put_bytes("m", b"x")
        assert list((tmp_path / "models").iterdir()) == []
        assert store.get_bytes("m") == b"x"


def test_factory_builds_a_gridfs_store(mongo_database: Database[dict[str, object]]) -> None:
    store = create_model_store(database=mongo_database, max_size=5)
    assert isinstance(store, GridFSModelStore)
    with pytest.raises(PayloadTooLarge):
        store.put_bytes("m", b"too long")


def test_factory_needs_exactly_one_backend(
    tmp_path: Path, mongo_database: Database[dict[str, object]]
) -> None:
    with pytest.raises(InvalidArgument, match="neither"):
        create_model_store()
    with pytest.raises(InvalidArgument, match="both"):
        create_model_store(data_dir=tmp_path, database=mongo_database)
