"""Find a model's weights: a local directory, the Hugging Face Hub, or ModelScope.

Only :func:`resolve_model` touches the network, and it gives up quickly: a
worker that cannot fetch its model should say so and how to fix it, not hang.
"""

from __future__ import annotations

from pathlib import Path

from qvl.errors import UserFacingError
from worker.engines.base import one_line

# Seconds to wait for the hub to answer at all. huggingface_hub's own metadata
# request has no timeout, so a network that drops packets would hang it.
PROBE_TIMEOUT = 5.0
ETAG_TIMEOUT = 5.0
_MODELSCOPE_PREFIXES = ("modelscope:", "ms://")


class ModelUnavailable(UserFacingError):
    """A model's weights could not be found or fetched; the message says how to fix it.

    ``model_id`` and ``reason`` are kept as attributes; the exception pickles
    like a plain one (one message argument), so it survives a Celery result.
    """

    def __init__(
        self, message: str, *, zh: str | None = None, model_id: str = "", reason: str = ""
    ) -> None:
        super().__init__(message, zh=zh)
        self.model_id = model_id
        self.reason = reason


def _unavailable(model_id: str, reason: str, hint: str | None = None) -> ModelUnavailable:
    hint = hint or f"`qvl model download {model_id}` or `hf download {model_id} --local-dir DIR`"
    return ModelUnavailable(
        f"Model {model_id} is unavailable: its weights could not be fetched ({reason}).\n"
        f"On a machine with internet, fetch them with {hint}.\n"
        "Or point at a local copy: QVL_MODEL=/path/to/dir",
        zh=f"模型 {model_id} 不可用：无法获取权重（{reason}）。\n"
        f"请在能上网的机器上用 {hint} 下载，\n"
        "或用 QVL_MODEL=/path/to/dir 指向本地目录。",
        model_id=model_id,
        reason=reason,
    )


def _unusable_dir(path: str, reason: str) -> ModelUnavailable:
    # A local path: there is nothing to fetch under that name.
    return ModelUnavailable(
        f"Model directory {path} is unusable ({reason}).\n"
        "Point QVL_MODEL=/path/to/dir at a directory with the model's config.json and "
        "weights, e.g. one made with `hf download ORG/NAME --local-dir DIR`.",
        zh=f"模型目录 {path} 无法使用（{reason}）。\n"
        "请让 QVL_MODEL=/path/to/dir 指向含 config.json 和权重的目录，"
        "例如用 `hf download ORG/NAME --local-dir DIR` 下载的目录。",
        model_id=path,
        reason=reason,
    )


def is_local(model: str) -> bool:
    """Whether ``model`` names a directory rather than a hub or ModelScope id."""
    return Path(model).expanduser().is_dir() or model.startswith(("/", "./", "../", "~"))


def resolve_model(model: str, *, cache_dir: Path | None = None, revision: str | None = None) -> Path:
    """Return a local directory holding ``model``'s files, fetching them if needed.

    ``model`` is a local directory (used as is), ``modelscope:ORG/NAME`` or
    ``ms://ORG/NAME`` (ModelScope), or a Hugging Face id (honours
    ``HF_HUB_OFFLINE``; the hub's cache is used when the network is down).
    ``revision`` pins a hub or ModelScope download to a commit or tag.
    Raises :class:`ModelUnavailable` with a short, actionable message.
    """
    if is_local(model):
        local = Path(model).expanduser()
        if not local.is_dir():
            raise _unusable_dir(model, "no such directory")
        if not (local / "config.json").is_file():
            raise _unusable_dir(model, "no config.json in it")
        return local.resolve()
    for prefix in _MODELSCOPE_PREFIXES:
        if model.startswith(prefix):
            return _from_modelscope(model, model[len(prefix):], cache_dir, revision)
    return _from_hub(model, cache_dir, revision)


def _from_hub(model_id: str, cache_dir: Path | None, revision: str | None = None) -> Path:
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    local_only = constants.HF_HUB_OFFLINE
    reason = "HF_HUB_OFFLINE is set and the files are not in the cache"
    if not local_only:
        try:
            HfApi().repo_info(model_id, revision=revision, timeout=PROBE_TIMEOUT)
        except HfHubHTTPError as exc:  # the hub answered: no such repo, gated, ...
            raise _unavailable(model_id, one_line(exc)) from exc
        except Exception as exc:  # no answer: the cache may still have it
            local_only = True
            reason = f"the hub did not answer: {one_line(exc)}"
    try:
        path = snapshot_download(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            etag_timeout=ETAG_TIMEOUT,
            local_files_only=local_only,
        )
    except Exception as exc:
        raise _unavailable(model_id, reason if local_only else one_line(exc)) from exc
    return Path(path)


def _from_modelscope(model: str, model_id: str, cache_dir: Path | None, revision: str | None = None) -> Path:
    hint = (
        f"`qvl model download {model}` or "
        f"`modelscope download --model {model_id} --local_dir DIR`"
    )
    try:
        from modelscope import snapshot_download
    except ImportError as exc:
        reason = "modelscope is not installed; install it with `pip install modelscope`"
        raise _unavailable(model, reason, hint) from exc
    try:
        path = snapshot_download(model_id, revision=revision, cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:
        raise _unavailable(model, one_line(exc), hint) from exc
    return Path(path)
