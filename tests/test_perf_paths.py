"""The copy-free data paths of the hot loop: in-place assembly and parsing, shared dumps, the
controller's single-partial reduce, and the combiner's model cache policies.

Each fast path must give exactly what the general path gives (or decline and let it run).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from fedgrpc.aggregators import WeightedMeanAccumulator
from fedgrpc.combiner.models import CachedModel, ModelCache
from fedgrpc.controller.reduce import Partial, ReduceOutcome, reduce_round
from fedgrpc.errors import (
    ChecksumMismatch,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    TruncatedStream,
)
from fedgrpc.model import buffers
from fedgrpc.model.chunking import BufferAssembler, iter_chunks, model_digest
from fedgrpc.model.serialization import (
    dump_model,
    dump_model_shared,
    header_specs,
    is_canonical_model,
    load_model,
)
from fedgrpc.modelstore import DirectoryModelStore


def _model(scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "w": (np.arange(3 * 1000, dtype=np.float32).reshape(3, 1000) * scale),
        "b": np.linspace(-1, 1, 7, dtype=np.float64) * scale,
    }


# --- assembly into one buffer ----------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 10, 3 * 1024 * 1024 + 5])
def test_buffer_assembler_returns_the_payload_writeable(size: int) -> None:
    payload = np.random.default_rng(0).bytes(size)
    assembler = BufferAssembler(
        expected_size=size, expected_digest=model_digest(payload), max_size=None
    )
    digests = [assembler.add_deferred(chunk) for chunk in iter_chunks(payload, 1 << 20)]
    for digest in digests:
        digest()
    data = assembler.finish()
    assert bytes(data) == payload
    assert not data.readonly


def test_buffer_assembler_checks_like_the_chunk_assembler() -> None:
    with pytest.raises(PayloadTooLarge):
        BufferAssembler(expected_size=100, max_size=10)
    short = BufferAssembler(expected_size=4, max_size=None)
    short.add(b"ab")
    with pytest.raises(TruncatedStream):
        short.finish()
    long = BufferAssembler(expected_size=2, max_size=None)
    with pytest.raises(PayloadTooLarge):
        long.add(b"abc")
    corrupt = BufferAssembler(expected_size=2, expected_digest=model_digest(b"ab"), max_size=None)
    corrupt.add(b"ax")
    with pytest.raises(ChecksumMismatch):
        corrupt.finish()


# --- parsing in place and dumping shared -----------------------------------------------------
def test_load_without_copy_views_the_buffer() -> None:
    data = dump_model(_model())
    views = load_model(bytearray(data), copy=False)
    assert all(array.flags.writeable for array in views.values())
    assert all(np.array_equal(views[name], array) for name, array in _model().items())
    assert not any(a.flags.writeable for a in load_model(data, copy=False).values())


def test_shared_dump_is_the_buffer_and_equals_a_fresh_dump() -> None:
    buffer = bytearray(dump_model(_model()))
    views = load_model(buffer, copy=False)
    for array in views.values():
        array /= 4  # in place, as the accumulator's take_partial_mean does
    shared = dump_model_shared(views)
    assert isinstance(shared, memoryview)
    assert shared.obj is buffer
    assert bytes(shared) == dump_model({name: a.copy() for name, a in views.items()})
    # Arrays not laid out in one canonical buffer are dumped as usual.
    assert isinstance(dump_model_shared({"w": views["w"]}), bytes)
    assert isinstance(dump_model_shared({**views, "b": views["b"].copy()}), bytes)


def test_a_list_trained_in_place_is_shared_and_bad_lists_fail_as_in_dump_model() -> None:
    buffer = bytearray(dump_model([np.arange(6, dtype=np.float32), np.ones(6, dtype=np.float64)]))
    views = load_model(buffer, copy=False)
    trained = [views["0"], views["1"]]  # a FEDn-style client's list, updated in place
    for array in trained:
        array += 1
    shared = dump_model_shared(trained)
    assert isinstance(shared, memoryview)
    assert shared.obj is buffer
    assert bytes(shared) == dump_model([array.copy() for array in trained])
    assert isinstance(dump_model_shared([trained[1], trained[0]]), bytes)  # reordered: copied
    with pytest.raises(InvalidArgument, match="not a numpy array"):
        dump_model_shared([trained[0], [1.0, 2.0]])  # type: ignore[list-item]


def test_canonical_means_what_dump_model_writes() -> None:
    model = _model()
    assert is_canonical_model(dump_model(model))
    assert not is_canonical_model(safetensors.numpy.save(model, metadata={"k": "v"}))
    data = dump_model(model)
    specs = header_specs(data[:200], total_size=len(data))
    assert specs == {name: (a.shape, a.dtype) for name, a in model.items()}


def test_take_partial_mean_equals_partial_mean() -> None:
    reference, taken = WeightedMeanAccumulator(_model()), WeightedMeanAccumulator(_model())
    for scale, weight in ((1.0, 3.0), (2.5, 1.0), (-1.0, 2.0)):
        reference.add(_model(scale), weight)
        taken.add(_model(scale), weight)
    expected = reference.partial_mean()
    result = taken.take_partial_mean()
    assert all(np.array_equal(result[n], expected[n]) for n in expected)
    assert taken.count == 0


# --- the controller's single-partial reduce --------------------------------------------------
def _reduce(tmp_path: Path, partial_bytes: bytes, *, aggregator: str = "fedavg") -> bytes:
    return _reduce_outcome(tmp_path, partial_bytes, aggregator=aggregator).model_bytes


def _reduce_outcome(
    tmp_path: Path, partial_bytes: bytes, *, aggregator: str = "fedavg", inline: bool = False
) -> ReduceOutcome:
    """The reduce of one partial, stored under "p" or (``inline``) held in memory."""
    store = DirectoryModelStore(tmp_path / "models")
    if not store.exists("global"):
        store.put_bytes("global", dump_model(_model()))
    if not inline:
        store.put_bytes("p", partial_bytes, durable=False)
    try:
        outcome = reduce_round(
            store=store,
            global_model_id="global",
            partials=[
                Partial(
                    combiner="c",
                    model_id="" if inline else "p",
                    total_weight=300.0,
                    num_updates=3,
                    digest=model_digest(partial_bytes),
                    data=partial_bytes if inline else None,
                )
            ],
            aggregator=aggregator,
            aggregator_kwargs={},
            state_id=None,
            max_model_size=1 << 30,
        )
    finally:
        store.delete("p")  # False (nothing to delete) for an inline partial
    assert outcome.num_updates == 3
    assert outcome.total_weight == 300.0
    return outcome


def test_single_partial_reduce_matches_the_general_path(tmp_path: Path) -> None:
    partial = dump_model(_model(0.25))
    assert _reduce(tmp_path, partial) == partial  # passed on as it is
    # Non-canonical bytes of the same model take the general path, which re-encodes them.
    odd = safetensors.numpy.save(_model(0.25), metadata={"k": "v"})
    assert _reduce(tmp_path, odd) == partial


def test_a_passed_on_partial_keeps_its_checked_digest_and_a_reencoded_one_does_not(
    tmp_path: Path,
) -> None:
    partial = dump_model(_model(0.25))
    passed_on = _reduce_outcome(tmp_path, partial)
    assert passed_on.model_digest == model_digest(partial)
    assert passed_on.source_model_id == "p"  # the commit links the partial's stored bytes
    odd = safetensors.numpy.save(_model(0.25), metadata={"k": "v"})
    reencoded = _reduce_outcome(tmp_path, odd)
    assert reencoded.model_digest is None  # the commit hashes it
    assert reencoded.source_model_id is None  # and writes the new bytes


def test_an_inline_partial_is_reduced_from_memory_like_a_stored_one(tmp_path: Path) -> None:
    partial = dump_model(_model(0.25))
    passed_on = _reduce_outcome(tmp_path, partial, inline=True)
    assert passed_on.model_bytes == partial
    assert passed_on.model_digest == model_digest(partial)
    assert passed_on.source_model_id is None  # nothing stored to link: the commit writes it
    odd = safetensors.numpy.save(_model(0.25), metadata={"k": "v"})
    assert _reduce_outcome(tmp_path, odd, inline=True).model_bytes == partial


@pytest.mark.parametrize("canonical", [True, False])
def test_the_global_model_held_in_memory_is_not_read_from_the_store(
    tmp_path: Path, canonical: bool
) -> None:
    partial = _model(0.25)
    data = (
        dump_model(partial) if canonical else safetensors.numpy.save(partial, metadata={"k": "v"})
    )

    def reduce_holding(global_bytes: bytes | None) -> ReduceOutcome:
        return reduce_round(
            store=DirectoryModelStore(tmp_path / "empty"),  # "global" is not in it
            global_model_id="global",
            partials=[
                Partial(combiner="c", model_id="", total_weight=3.0, num_updates=3, data=data)
            ],
            aggregator="fedavg",
            aggregator_kwargs={},
            state_id=None,
            max_model_size=1 << 30,
            global_model_bytes=global_bytes,
        )

    assert reduce_holding(dump_model(_model())).model_bytes == dump_model(partial)
    with pytest.raises(NotFound):  # without the bytes, the store is read
        reduce_holding(None)


def test_single_partial_with_nan_is_rejected_as_before(tmp_path: Path) -> None:
    bad = _model()
    bad["w"][0, 0] = np.nan
    with pytest.raises(Exception, match="no usable update"):
        _reduce(tmp_path, dump_model(bad))


def test_modelstore_non_durable_put_stores_the_same(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path)
    stored = store.put_bytes("x", memoryview(b"abc"), durable=False)
    assert store.get_bytes("x") == b"abc"
    assert stored.digest == model_digest(b"abc")


# --- the combiner's cache ----------------------------------------------------------------------
def test_cache_releases_a_large_model_after_the_expected_downloads() -> None:
    fetches: list[str] = []

    async def fetch(model_id: str) -> CachedModel:
        fetches.append(model_id)
        return CachedModel(model_id=model_id, data=bytes(40 << 20), digest="0" * 64)

    async def scenario() -> None:
        cache = ModelCache(fetch)
        cached = await cache.get("m")
        cache.expect_downloads("m", 2)
        cache.downloaded(cached)
        await cache.get("m")  # still cached: one download to come
        cache.downloaded(cached)
        await cache.get("m")  # released, fetched anew
        assert fetches == ["m", "m"]
        cache.downloaded(cached)  # a download nobody announced (validation) keeps it
        await cache.get("m")
        assert fetches == ["m", "m"]

    asyncio.run(scenario())


def test_cache_reuses_a_remembered_upload_once() -> None:
    async def fetch(model_id: str) -> CachedModel:
        raise AssertionError("not fetched")

    cache = ModelCache(fetch)
    cache.remember_upload(b"partial", "a" * 64)
    assert cache.by_digest("b" * 64) is None
    assert cache.by_digest("a" * 64) is None  # a miss forgets it: it is obsolete
    cache.remember_upload(b"partial", "a" * 64)
    assert cache.by_digest("a" * 64) == b"partial"
    assert cache.by_digest("a" * 64) is None


@pytest.mark.parametrize("advice", [None, 9999])  # 9999: a kernel without that madvise
def test_receive_buffers_are_zeroed_and_writeable_with_or_without_populate(
    monkeypatch: pytest.MonkeyPatch, advice: int | None
) -> None:
    if advice is not None:
        monkeypatch.setattr(buffers, "MADV_POPULATE_WRITE", advice)
    size = 3 * 1024 * 1024 + 5
    buffer = buffers.zeroed(size)
    view = memoryview(buffer)
    assert view.nbytes == size
    assert not any(view[::4096])
    assert view[-1] == 0
    view[-1] = 7
    assert buffer[-1] == 7
    view.release()
