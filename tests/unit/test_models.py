"""Choosing a model is one setting: engine and box format follow from it."""

import json
import subprocess
import sys

from qvl.models import infer
from qvl.settings import Settings
from worker.engines import engine_and_family


def test_known_models_and_names():
    assert infer("Qwen/Qwen2.5-VL-7B-Instruct") == ("transformers", "qwen2.5-vl")
    assert infer("modelscope:Qwen/Qwen-VL-Chat") == ("qwen-vl", "qwen-vl")
    assert infer("qwen-vl-max") == ("openai", "qwen-vl")
    assert infer("someone/my-Qwen3-VL-finetune") == ("transformers", "qwen3-vl")
    assert infer("someone/llava") == (None, None)


def test_local_directory_config_decides(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    assert infer(str(tmp_path)) == ("transformers", "qwen2-vl")


def test_settings_override_inference():
    settings = Settings(model="Qwen/Qwen2.5-VL-7B-Instruct", engine="openai", family=None)
    assert engine_and_family(settings) == ("openai", "qwen2.5-vl")
    assert engine_and_family(Settings(model="x/unknown", engine="auto")) == ("transformers", None)


def test_qvl_models_lists_them():
    run = subprocess.run([sys.executable, "-m", "cli", "models"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "QVL_MODEL": "qwen-vl-plus", "HOME": "/tmp"})
    assert run.returncode == 0, run.stderr
    assert "Qwen/Qwen3-VL-2B-Instruct" in run.stdout and "22.6 GB" in run.stdout
    assert "QVL_MODEL=qwen-vl-plus → engine openai, family qwen-vl" in run.stdout
