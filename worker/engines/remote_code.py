"""What must hold before Qwen-VL-Chat's own Python code may run in a worker.

Qwen-VL-Chat ships its model and tokenizer as code in the model repository
(``trust_remote_code``): loading it runs that code with the worker's rights. So:

- Hub and ModelScope models run only at a revision the operator trusts
  (``QVL_QWEN_VL_TRUSTED``, ``ORG/NAME@REVISION``); the download is pinned to it.
- A local directory runs only if the SHA-256 of its code files is on the same list
  (``sha256:HEX``): trust follows the code, not the path. The refusal prints the
  digest, to be added after reading the code.
- The code was written for transformers 4.32 and breaks on later releases; the
  installed version is checked before anything loads, so a worker fails at start,
  never halfway through someone's turn.

No torch or transformers import here: the checks run in ``qvl up`` before any model loads.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from qvl.errors import UserFacingError

# Probed with a tiny random-weight model built from the published remote code
# (load, then model.chat with a picture and a streamer): these releases work.
# 4.52.x fails to load ('Resampler' object has no attribute '_initialize_weights');
# 4.54 onwards fails in generate (the new cache objects: past_key_values[0][0] is None);
# 4.57 onwards and 5.x fail to load (transformers_stream_generator imports removed names).
TESTED_TRANSFORMERS = ("4.32.0", "4.37.2", "4.40.2", "4.44.2", "4.46.3", "4.49.0", "4.50.3",
                       "4.51.3", "4.53.0", "4.53.3")
WORKING_TRANSFORMERS = SpecifierSet(">=4.32,<4.54,!=4.52.*")
PINNED_TRANSFORMERS = "4.53.3"  # the qwen-vl extra and the qwen-vl worker image
CODE_SUFFIXES = (".py",)
CONFIG_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
_COMMIT = re.compile(r"[0-9a-f]{40}")


class UntrustedCode(UserFacingError):
    """The model's own code is not on the operator's allowlist; the message says how to add it."""


def check_transformers(installed: str | None = None) -> None:
    """Raise :class:`UserFacingError` unless Qwen-VL-Chat's code runs on this transformers.

    ``installed`` defaults to the installed distribution's version.
    """
    if installed is None:
        try:
            installed = importlib.metadata.version("transformers")
        except importlib.metadata.PackageNotFoundError:
            installed = "none"
    try:
        ok = Version(installed) in WORKING_TRANSFORMERS
    except InvalidVersion:
        ok = False
    if not ok:
        raise UserFacingError(
            f"Qwen-VL-Chat's own code does not run on transformers {installed}. It runs on "
            f"transformers {WORKING_TRANSFORMERS} (tested: {', '.join(TESTED_TRANSFORMERS)}).\n"
            f"Give this worker its own environment: pip install -e '.[qwen-vl]' "
            f"(transformers=={PINNED_TRANSFORMERS}), or the qwen-vl worker image "
            "(docker compose --profile qwen-vl up).",
            zh=f"Qwen-VL-Chat 的代码不能在 transformers {installed} 上运行，需要 "
            f"transformers {WORKING_TRANSFORMERS}。请为该 worker 单独安装：pip install -e '.[qwen-vl]'。",
        )


def parse_trusted(value: str) -> tuple[dict[str, str], frozenset[str]]:
    """``QVL_QWEN_VL_TRUSTED`` as ({repository id (lower case): revision}, {code digests}).

    Entries are comma-separated: ``ORG/NAME@REVISION`` (a Hugging Face id, or a
    ModelScope one written ``modelscope:ORG/NAME@REVISION``) or ``sha256:HEX``.
    Raises :class:`UserFacingError` for an entry of neither form (a repository with no
    revision included: trusting "whatever the branch holds today" is not a pin).
    """
    repos: dict[str, str] = {}
    digests: set[str] = set()
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        if entry.startswith("sha256:"):
            digests.add(entry.removeprefix("sha256:").lower())
            continue
        repo, sep, revision = entry.rpartition("@")
        if not sep or not repo or not revision:
            raise UserFacingError(
                f"QVL_QWEN_VL_TRUSTED entry {entry!r} needs a pinned revision: ORG/NAME@COMMIT "
                "(modelscope:ORG/NAME@TAG on ModelScope), or sha256:DIGEST for a local directory.")
        if not _repo_key(repo).startswith("modelscope:") and not _COMMIT.fullmatch(revision):
            raise UserFacingError(
                f"QVL_QWEN_VL_TRUSTED entry {entry!r}: on Hugging Face, pin the full 40-character commit "
                "hash; a branch or tag can be moved to other code.")
        repos[_repo_key(repo)] = revision
    return repos, frozenset(digests)


def pinned_revision(model: str, trusted: str) -> str:
    """The revision to fetch a hub or ModelScope ``model`` at; raises :class:`UntrustedCode`."""
    repos, _ = parse_trusted(trusted)
    revision = repos.get(_repo_key(model))
    if revision is None:
        raise UntrustedCode(
            f"{model} runs its own Python code (trust_remote_code), and it is not on the allowlist.\n"
            f"Read the code at a revision you trust, then add {model}@REVISION to QVL_QWEN_VL_TRUSTED.",
            zh=f"{model} 需要运行其自带的 Python 代码（trust_remote_code），但不在允许列表中。"
            f"请审阅代码后把 {model}@REVISION 加入 QVL_QWEN_VL_TRUSTED。")
    return revision


def check_directory(path: Path, trusted: str, *, pinned: bool = False) -> None:
    """Allow the code in ``path`` to run, or raise :class:`UntrustedCode`.

    The ``auto_map`` entries of its configs must name its own files (not code in another
    repository, which transformers would fetch unpinned). ``pinned`` means ``path`` was
    fetched at a trusted revision; otherwise the digest of its code must be trusted.
    """
    _check_auto_map(Path(path))
    if pinned:
        return
    _, digests = parse_trusted(trusted)
    digest = code_digest(path)
    if digest not in digests:
        raise UntrustedCode(
            f"The model in {path} runs its own Python code (trust_remote_code), and that code is not "
            f"on the allowlist. Its digest is sha256:{digest}.\n"
            f"Read the .py files there, then add sha256:{digest} to QVL_QWEN_VL_TRUSTED.",
            zh=f"{path} 中的模型需要运行其自带的 Python 代码，但不在允许列表中。"
            f"审阅后把 sha256:{digest} 加入 QVL_QWEN_VL_TRUSTED。")


def _check_auto_map(path: Path) -> None:
    """Refuse configs whose ``auto_map`` points outside the directory's own code files."""
    for name in CONFIG_FILES:
        try:
            auto_map = json.loads((path / name).read_text()).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for value in auto_map.values():
            for reference in value if isinstance(value, list) else [value]:
                if reference is None:
                    continue
                module = str(reference).rsplit(".", 1)[0]
                if "--" in str(reference) or not (path / f"{module}.py").is_file():
                    raise UntrustedCode(
                        f"{path / name} maps a class to {reference!r}, which is not one of the model's own "
                        "code files there: refusing to run code from anywhere else.",
                        zh=f"{path / name} 的 auto_map 指向 {reference!r}，不是模型目录中的代码文件，拒绝运行。")


def code_digest(path: Path) -> str:
    """SHA-256 over the directory's code files (names and contents, sorted by name)."""
    h = hashlib.sha256()
    for file in sorted(p for p in Path(path).iterdir() if p.suffix.lower() in CODE_SUFFIXES and p.is_file()):
        data = file.read_bytes()
        h.update(f"{file.name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _repo_key(model: str) -> str:
    """Hugging Face ids match whatever their case (the hub treats them so); ModelScope ids exactly."""
    for prefix in ("modelscope:", "ms://"):
        if model.startswith(prefix):
            return "modelscope:" + model[len(prefix):]
    return model.lower()
