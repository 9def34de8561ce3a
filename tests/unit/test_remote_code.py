"""Qwen-VL-Chat's own code runs only when trusted, and only on transformers it works with."""

import pytest

from qvl.errors import UserFacingError
from qvl.settings import Settings
from worker.engines.remote_code import (
    UntrustedCode,
    check_directory,
    check_transformers,
    code_digest,
    parse_trusted,
    pinned_revision,
)

TRUSTED = Settings().qwen_vl_trusted


@pytest.mark.parametrize("version", ["4.32.0", "4.44.2", "4.51.3", "4.53.3"])
def test_working_transformers_pass(version):
    check_transformers(version)


@pytest.mark.parametrize("version", ["4.31.0", "4.52.4", "4.54.1", "4.57.1", "5.24.0", "none"])
def test_other_transformers_fail_naming_the_working_ones(version):
    with pytest.raises(UserFacingError) as caught:
        check_transformers(version)
    message = caught.value.message
    assert f"transformers {version}" in message
    assert "4.53.3" in message and ">=4.32" in message and "!=4.52.*" in message
    assert "pip install -e '.[qwen-vl]'" in message


def test_the_installed_transformers_is_checked_by_default():
    import transformers

    if transformers.__version__.startswith("5."):
        with pytest.raises(UserFacingError, match=transformers.__version__):
            check_transformers()
    else:
        check_transformers()


def test_published_repositories_are_pinned_by_default():
    assert pinned_revision("Qwen/Qwen-VL-Chat", TRUSTED) == "f57cfbd358cb56b710d963669ad1bcfb44cdcdd8"
    assert pinned_revision("qwen/qwen-vl-chat-int4", TRUSTED) == "cbe5f4e5a742f3019d084e0d53861f72b4e60350"
    assert pinned_revision("modelscope:qwen/Qwen-VL-Chat", TRUSTED) == "v1.1.0"
    assert pinned_revision("ms://qwen/Qwen-VL-Chat-Int4", TRUSTED) == "v1.0.0"


def test_a_repository_off_the_list_is_refused_with_how_to_allow_it():
    with pytest.raises(UntrustedCode) as caught:
        pinned_revision("someone/Qwen-VL-Chat-finetune", TRUSTED)
    assert "trust_remote_code" in caught.value.message
    assert "someone/Qwen-VL-Chat-finetune@REVISION" in caught.value.message
    assert "QVL_QWEN_VL_TRUSTED" in caught.value.message
    allowed = TRUSTED + ",someone/Qwen-VL-Chat-finetune@" + "ab" * 20
    assert pinned_revision("someone/Qwen-VL-Chat-finetune", allowed) == "ab" * 20


def test_an_entry_without_a_revision_is_refused():
    with pytest.raises(UserFacingError, match="pinned revision"):
        parse_trusted("Qwen/Qwen-VL-Chat")
    repos, digests = parse_trusted(f" Qwen/Qwen-VL-Chat@{'0' * 40} , sha256:ABCD ,")
    assert repos == {"qwen/qwen-vl-chat": "0" * 40} and digests == {"abcd"}


@pytest.mark.parametrize("revision", ["main", "v1.0", "f57cfbd"])
def test_a_hugging_face_branch_tag_or_short_hash_is_not_a_pin(revision):
    with pytest.raises(UserFacingError, match="40-character commit"):
        parse_trusted(f"Qwen/Qwen-VL-Chat@{revision}")


def test_modelscope_ids_match_exactly():
    assert pinned_revision("modelscope:qwen/Qwen-VL-Chat", "modelscope:qwen/Qwen-VL-Chat@v1.1.0") == "v1.1.0"
    with pytest.raises(UntrustedCode):
        pinned_revision("modelscope:QWEN/Qwen-VL-Chat", "modelscope:qwen/Qwen-VL-Chat@v1.1.0")


def test_a_local_directory_runs_only_code_whose_digest_is_trusted(tmp_path):
    (tmp_path / "modeling_qwen.py").write_text("print('model')\n")
    (tmp_path / "config.json").write_text("{}")
    digest = code_digest(tmp_path)
    with pytest.raises(UntrustedCode) as caught:
        check_directory(tmp_path, TRUSTED)
    assert f"sha256:{digest}" in caught.value.message
    check_directory(tmp_path, f"{TRUSTED},sha256:{digest}")
    (tmp_path / "config.json").write_text('{"changed": true}')  # not code: the digest holds
    check_directory(tmp_path, f"{TRUSTED},sha256:{digest}")
    (tmp_path / "modeling_qwen.py").write_text("import os; os.system('curl evil')\n")
    with pytest.raises(UntrustedCode):
        check_directory(tmp_path, f"{TRUSTED},sha256:{digest}")
    (tmp_path / "modeling_qwen.py").write_text("print('model')\n")
    (tmp_path / "extra.py").write_text("")  # a file added beside the trusted ones
    with pytest.raises(UntrustedCode):
        check_directory(tmp_path, f"{TRUSTED},sha256:{digest}")


def _model_dir(path, auto_map):
    import json

    (path / "modeling_qwen.py").write_text("print('model')\n")
    (path / "config.json").write_text(json.dumps({"model_type": "qwen", "auto_map": auto_map}))
    return path


def test_an_auto_map_into_another_repository_is_refused_even_when_trusted(tmp_path):
    """transformers would fetch "OTHER/REPO--module.Class" from the hub, unpinned."""
    model = _model_dir(tmp_path, {"AutoModelForCausalLM": "evil/repo--modeling_qwen.QWenLMHeadModel"})
    trusted = f"sha256:{code_digest(model)}"
    with pytest.raises(UntrustedCode, match="evil/repo--modeling_qwen"):
        check_directory(model, trusted)
    with pytest.raises(UntrustedCode):
        check_directory(model, trusted, pinned=True)  # a pinned fine-tune pointing elsewhere


def test_an_auto_map_naming_a_file_that_is_not_there_is_refused(tmp_path):
    model = _model_dir(tmp_path, {"AutoModelForCausalLM": "elsewhere.QWenLMHeadModel"})
    with pytest.raises(UntrustedCode, match="elsewhere"):
        check_directory(model, f"sha256:{code_digest(model)}")
    model = _model_dir(tmp_path, {"AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"})
    check_directory(model, f"sha256:{code_digest(model)}")


def test_code_files_count_whatever_the_case_of_their_suffix(tmp_path):
    model = _model_dir(tmp_path, {})
    before = code_digest(model)
    (tmp_path / "visual.PY").write_text("import os\n")
    assert code_digest(model) != before
