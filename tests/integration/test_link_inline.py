"""Models on the combiner link: both ends check an inline model or partial as a transfer."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedgrpc.combiner.core import _inline_model
from fedgrpc.controller.link_models import (
    InlineModel,
    check_inline_partial,
    take_inline_partials,
)
from fedgrpc.errors import ChecksumMismatch, PayloadTooLarge
from fedgrpc.model.chunking import model_digest
from fedgrpc.model.serialization import dump_model
from fedgrpc.modelstore import EmbeddedModelStore
from fedgrpc.proto.network.v1 import network_pb2
from tests.integration.conftest import LocalNetwork

PARTIAL = dump_model([np.arange(10, dtype=np.float32)])


def _result(data: bytes, digest: str) -> network_pb2.RoundResult:
    return network_pb2.RoundResult(round_id="r", partial=data, partial_digest=digest)


def test_a_checked_inline_partial_is_kept_in_memory_with_its_digest(
    local_network: LocalNetwork,
) -> None:
    network = local_network.controller.network
    checked = check_inline_partial(network, PARTIAL, model_digest(PARTIAL))
    assert (checked.data, checked.digest) == (PARTIAL, model_digest(PARTIAL))


def test_an_inline_partial_that_fails_its_checks_is_refused(local_network: LocalNetwork) -> None:
    network = local_network.controller.network
    with pytest.raises(ChecksumMismatch, match="inline partial's digest"):
        check_inline_partial(network, PARTIAL, model_digest(PARTIAL + b"x"))
    too_big = b"x" * (network.config.inline_model_bytes + 1)
    with pytest.raises(PayloadTooLarge, match="inline"):
        check_inline_partial(network, too_big, model_digest(too_big))


async def test_a_refused_partial_turns_its_result_into_an_error_and_nothing_is_stored(
    local_network: LocalNetwork,
) -> None:
    network = local_network.controller.network
    assert isinstance(network.models, EmbeddedModelStore)
    stored_before = network.models.model_ids()
    good, bad = _result(PARTIAL, model_digest(PARTIAL)), _result(PARTIAL, "0" * 64)
    checked = take_inline_partials(network, {"good": good, "bad": bad})
    assert set(checked) == {"good"}
    assert checked["good"].data == PARTIAL
    assert (good.error, good.partial) == ("", b"")  # the bytes moved out of the message
    assert (bad.model_id, bad.partial) == ("", b"")
    assert "digest" in bad.error
    assert network.models.model_ids() == stored_before


def test_the_combiner_checks_an_inline_global_model() -> None:
    assignment = network_pb2.RoundAssignment(
        model_id="m", model=PARTIAL, model_digest=model_digest(PARTIAL)
    )
    assert _inline_model(assignment, PARTIAL, 1 << 20).data == PARTIAL
    with pytest.raises(PayloadTooLarge, match="inline limit of 10 bytes"):
        _inline_model(assignment, PARTIAL, 10)
    assignment.model_digest = model_digest(b"other")
    with pytest.raises(ChecksumMismatch, match="inline model m"):
        _inline_model(assignment, PARTIAL, 1 << 20)


async def test_the_controller_sends_only_small_models_inline(local_network: LocalNetwork) -> None:
    network = local_network.controller.network
    small = await local_network.upload_seed([np.zeros(10, dtype=np.float32)])
    large = await local_network.upload_seed([np.zeros(300_000, dtype=np.float32)])  # 1.2 MB
    inline = InlineModel(network)
    found = await inline.get(small)
    assert found is not None
    assert found[1] == model_digest(found[0])
    assert await inline.get(large) is None
    assert await inline.get("no-such-model") is None  # the download path reports it
    inline.remember("new", PARTIAL, model_digest(PARTIAL))
    assert await inline.get("new") == (PARTIAL, model_digest(PARTIAL))


async def test_a_model_recorded_before_blake3_digests_is_served_and_sent_inline(
    local_network: LocalNetwork,
) -> None:
    """A record written when model digests were SHA-256 has a ``sha256`` and no ``digest``:
    it is downloaded without a digest to check against, and inline with one computed anew."""
    network = local_network.controller.network
    arrays = [np.arange(12, dtype=np.float32)]
    data = dump_model(arrays)
    network.models.put_bytes("legacy", data)
    network.store.models.create(
        id="legacy",
        parent_model=None,
        session_id=None,
        name="old",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    downloaded = await local_network.download("legacy")
    assert np.array_equal(downloaded["0"], arrays[0])
    assert await InlineModel(network).get("legacy") == (data, model_digest(data))
