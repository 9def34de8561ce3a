"""resolve_model: local directories, the hub (never reached here), ModelScope."""

from __future__ import annotations

import pickle
import sys
import time
import types
from pathlib import Path

import huggingface_hub.constants
import pytest

from qvl.errors import UserFacingError
from worker.engines.weights import ModelUnavailable, resolve_model

HUB_ID = "qvl-tests/no-such-model"


def _assert_actionable(message: str, model_id: str) -> None:
    assert model_id in message
    assert "could not be fetched" in message
    assert f"qvl model download {model_id}" in message
    assert "QVL_MODEL=/path/to/dir" in message
    assert len(message.splitlines()) == 3


def test_a_local_model_directory_is_used_as_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path.resolve()


def test_a_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="no config.json") as caught:
        resolve_model(str(tmp_path))
    assert "QVL_MODEL=" in str(caught.value)


def test_a_missing_local_path_is_not_looked_up_on_the_hub(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="no such directory"):
        resolve_model(str(tmp_path / "absent"))


def test_offline_an_uncached_hub_model_fails_fast(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model(HUB_ID, cache_dir=tmp_path)
    assert time.perf_counter() - start < 2
    _assert_actionable(str(caught.value), HUB_ID)
    assert f"hf download {HUB_ID} --local-dir DIR" in str(caught.value)
    assert "HF_HUB_OFFLINE" in str(caught.value)


def test_an_unreachable_hub_fails_fast(monkeypatch, tmp_path: Path) -> None:
    # Port 9 on loopback refuses at once: the network path runs without leaving the machine.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model(HUB_ID, cache_dir=tmp_path)
    assert time.perf_counter() - start < 10
    _assert_actionable(str(caught.value), HUB_ID)
    assert "did not answer" in str(caught.value)


def test_offline_a_cached_hub_model_is_found(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo = tmp_path / "models--qvl-tests--cached"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert resolve_model("qvl-tests/cached", cache_dir=tmp_path) == snapshot


def test_a_pinned_revision_is_the_one_used_not_main(monkeypatch, tmp_path: Path) -> None:
    """Qwen-VL-Chat's code runs at the trusted commit even when the branch has moved on."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo = tmp_path / "models--qvl-tests--pinned"
    for commit in ("0" * 40, "1" * 40):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    assert resolve_model("qvl-tests/pinned", cache_dir=tmp_path).name == "1" * 40
    assert resolve_model("qvl-tests/pinned", cache_dir=tmp_path, revision="0" * 40).name == "0" * 40
    with pytest.raises(ModelUnavailable):
        resolve_model("qvl-tests/pinned", cache_dir=tmp_path, revision="2" * 40)


@pytest.mark.parametrize("model", ["modelscope:qwen/Qwen2-VL-2B-Instruct", "ms://qwen/Qwen2-VL-2B-Instruct"])
def test_modelscope_without_the_package_says_how_to_install_it(monkeypatch, model: str) -> None:
    monkeypatch.setitem(sys.modules, "modelscope", None)  # import fails, installed or not
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model(model)
    message = str(caught.value)
    _assert_actionable(message, model)
    assert "pip install modelscope" in message
    assert "modelscope download --model qwen/Qwen2-VL-2B-Instruct" in message


def test_modelscope_ids_go_to_modelscope(monkeypatch, tmp_path: Path) -> None:
    asked: list[tuple] = []

    def snapshot_download(model_id, revision=None, cache_dir=None):  # modelscope's own signature
        asked.append((model_id, revision, cache_dir))
        return str(tmp_path)

    fake = types.ModuleType("modelscope")
    fake.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    assert resolve_model("ms://qwen/Qwen2-VL-2B-Instruct", cache_dir=tmp_path) == tmp_path
    assert resolve_model("modelscope:qwen/Qwen-VL-Chat", revision="v1.1.0") == tmp_path
    assert asked == [("qwen/Qwen2-VL-2B-Instruct", None, str(tmp_path)), ("qwen/Qwen-VL-Chat", "v1.1.0", None)]


def test_a_modelscope_failure_is_model_unavailable(monkeypatch) -> None:
    def snapshot_download(model_id, revision=None, cache_dir=None):
        raise ConnectionError("no route to host\nmore detail")

    fake = types.ModuleType("modelscope")
    fake.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    with pytest.raises(ModelUnavailable, match="ConnectionError: no route to host") as caught:
        resolve_model("modelscope:qwen/Qwen2-VL-2B-Instruct")
    assert "more detail" not in str(caught.value)


def test_model_unavailable_is_user_facing_and_survives_pickling(monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserFacingError) as caught:
        resolve_model(HUB_ID)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(copy, ModelUnavailable)
    assert (str(copy), copy.model_id, copy.reason) == (str(caught.value), HUB_ID, caught.value.reason)
    assert HUB_ID in copy.zh and "QVL_MODEL=" in copy.zh
