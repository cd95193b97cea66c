"""Seed models from files, the model trail, lineage queries and verified downloads."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from fedgrpc import errors
from fedgrpc.api import APIClient
from fedgrpc.model.serialization import load_model
from tests.api.conftest import ROUNDS, SEED, Trained, write_safetensors

pytestmark = pytest.mark.timeout(60)


def assert_same_arrays(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype
        np.testing.assert_allclose(actual[name], array, rtol=1e-6)


def test_set_active_model_from_safetensors_round_trips(api: APIClient, tmp_path: Path) -> None:
    arrays: list[np.ndarray] = [
        np.arange(6, dtype=np.int32).reshape(2, 3),
        np.ones(3, dtype=np.float16),
    ]
    source = write_safetensors(tmp_path / "weights.safetensors", arrays)
    before = api.get_models_count()

    result = api.set_active_model(str(source))

    assert result["success"] is True
    assert result["model_id"] in result["message"]
    assert api.get_models_count() == before + 1
    active = api.get_active_model()
    assert (active["id"], active["active"], active["parent_model"]) == (
        result["model_id"],
        True,
        "",
    )
    assert active["name"] == "weights.safetensors"
    assert active["size"] == source.stat().st_size  # uint64: an int again, not a string
    target = tmp_path / "downloaded.safetensors"
    downloaded = api.download_model(result["model_id"], str(target))
    assert downloaded["success"] is True
    assert target.read_bytes() == source.read_bytes()


def test_set_active_model_from_npz_converts_to_a_list_model(api: APIClient, tmp_path: Path) -> None:
    source = tmp_path / "seed.npz"
    np.savez(source, *SEED)  # positional arrays: arr_0, arr_1
    result = api.set_active_model(source)
    assert api.get_active_model()["id"] == result["model_id"]
    target = tmp_path / "seed.safetensors"
    api.download_model(result["model_id"], target)
    assert_same_arrays(load_model(target.read_bytes()), {str(i): a for i, a in enumerate(SEED)})


def test_set_active_model_from_named_npz_keeps_the_names(api: APIClient, tmp_path: Path) -> None:
    source = tmp_path / "named.npz"
    np.savez_compressed(source, weight=SEED[0], bias=SEED[1])
    result = api.set_active_model(str(source))
    target = tmp_path / "named.safetensors"
    api.download_model(result["model_id"], str(target))
    assert_same_arrays(load_model(target.read_bytes()), {"weight": SEED[0], "bias": SEED[1]})


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("model.pt", b"not a supported format"),
        ("broken.safetensors", b"\x00\x01 not safetensors"),
        ("broken.npz", b"not a zip archive"),
    ],
)
def test_bad_seed_files_are_refused_before_upload(
    api: APIClient, tmp_path: Path, name: str, content: bytes
) -> None:
    before = api.get_models_count()
    (tmp_path / name).write_bytes(content)
    with pytest.raises(errors.InvalidArgument) as caught:
        api.set_active_model(str(tmp_path / name))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert api.get_models_count() == before


def test_npz_with_object_arrays_is_refused(api: APIClient, tmp_path: Path) -> None:
    source = tmp_path / "pickled.npz"
    np.savez(source, np.array([{"a": 1}], dtype=object))  # needs pickle to load
    with pytest.raises(errors.InvalidArgument):
        api.set_active_model(str(source))


def test_models_of_a_session_and_pages(api: APIClient, trained: Trained) -> None:
    models = api.get_models(session_id=trained.session_id)
    assert models["count"] == ROUNDS
    assert sorted(m["round_number"] for m in models["result"]) == list(range(1, ROUNDS + 1))
    assert all(m["session_id"] == trained.session_id for m in models["result"])
    newest = api.get_models(session_id=trained.session_id, n_max=1)
    assert newest["count"] == ROUNDS
    assert [m["id"] for m in newest["result"]] == [trained.session["model_id"]]
    every = api.get_models()
    assert every["count"] == api.get_models_count() >= ROUNDS + 1
    assert api.get_model(trained.seed_model_id)["session_id"] == ""


def test_trained_model_is_the_fedavg_of_the_good_updates(
    api: APIClient, trained: Trained, tmp_path: Path
) -> None:
    # site-a adds 0.1 with weight 100, site-b 0.3 with 300; the other two are left out.
    target = tmp_path / "final.safetensors"
    api.download_model(trained.session["model_id"], str(target))
    shift = ROUNDS * (0.1 * 100 + 0.3 * 300) / 400
    expected = {str(i): a + np.asarray(shift, dtype=a.dtype) for i, a in enumerate(SEED)}
    assert_same_arrays(load_model(target.read_bytes()), expected)


def test_model_trail_from_the_active_model(api: APIClient, trained: Trained) -> None:
    final = trained.session["model_id"]
    api.control.set_active_model(model_id=final)  # other tests move the active model
    chain = [m["id"] for m in api.get_models(session_id=trained.session_id)["result"]]
    newest_first = [*chain, trained.seed_model_id]  # the session's models are newest first

    trail = api.get_model_trail()
    assert [m["id"] for m in trail["result"]] == newest_first
    assert trail["count"] == len(newest_first)
    assert trail["result"][0]["active"] is True
    oldest_first = api.get_model_trail(id=final, reverse=False)
    assert [m["id"] for m in oldest_first["result"]] == newest_first[::-1]
    without_self = api.get_model_trail(id=final, include_self=False)
    assert [m["id"] for m in without_self["result"]] == newest_first[1:]
    nearest = api.get_model_trail(id=final, n_max=2)
    assert [m["id"] for m in nearest["result"]] == newest_first[:2]


def test_ancestors_and_descendants(api: APIClient, trained: Trained) -> None:
    final, seed = trained.session["model_id"], trained.seed_model_id
    by_round = sorted(
        api.get_models(session_id=trained.session_id)["result"], key=lambda m: m["round_number"]
    )
    chain = [seed, *(m["id"] for m in by_round)]  # seed, round 1, ..., final
    assert chain[-1] == final

    ancestors = api.get_model_ancestors(final)
    assert [m["id"] for m in ancestors["result"]] == chain[-2::-1]  # nearest first
    assert api.get_model_ancestors(final, limit=1)["result"][0]["id"] == chain[-2]
    assert api.get_model_ancestors(final, include_self=True)["result"][0]["id"] == final

    assert [m["id"] for m in api.get_model_descendants(chain[1])["result"]] == chain[2:]
    # Other sessions may have started from the same seed: look at this session's share.
    of_seed = api.get_model_descendants(seed)["result"]
    assert [m["id"] for m in of_seed if m["session_id"] == trained.session_id] == chain[1:]
    first = api.get_model_descendants(seed, limit=1)
    assert (first["count"], first["result"][0]["parent_model"]) == (1, seed)
    assert api.get_model_descendants(seed, include_self=True)["result"][0]["id"] == seed
    assert api.get_model_descendants(final) == {"count": 0, "result": []}


def test_failed_download_leaves_no_file(api: APIClient, tmp_path: Path) -> None:
    target = tmp_path / "missing.safetensors"
    with pytest.raises(errors.NotFound) as caught:
        api.download_model("no-such-model", str(target))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert list(tmp_path.iterdir()) == []
