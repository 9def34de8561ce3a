"""One turn, start to finish: SQL → context → engine → grounding → SQL → reply event."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import redis as redis_lib
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from qvl import events
from qvl.dispatch import send_turns
from qvl.errors import UserFacingError
from qvl.messages import say
from qvl.models import engine_and_family
from qvl.protocol import BoxesPart, Event, ImagePart, JobState, Part, TextPart
from qvl.queue import make_celery
from qvl.settings import Settings
from storage import repo
from storage.db import make_engine, make_sessionmaker
from storage.models import utcnow
from worker.engines import Engine, load_engine
from worker.grounding import Parsed, parse, to_pixels
from worker.grounding.draw import draw_boxes
from worker.images import BadImage, Limits, decode_image
from worker.prompt.context import StoredTurn, build_window

log = logging.getLogger(__name__)


class Runtime:
    """What a worker process holds: settings, database, Redis, and the engine (lazily)."""

    def __init__(self, settings: Settings, *, redis_url: str,
                 engine_factory: Callable[[Settings], Engine] = load_engine):
        self.settings = settings
        self.sessions = make_sessionmaker(make_engine(settings.resolved_database_url()))
        self.redis = redis_lib.Redis.from_url(redis_url)
        self.celery = make_celery(settings, redis_url)  # sends a conversation's next turn
        self._engine_factory = engine_factory
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self.limits = Limits(settings.image_max_bytes, settings.image_max_pixels,
                             max_aspect=settings.image_max_aspect, max_scans=settings.image_max_scans,
                             decode_s=settings.image_decode_s)
        self.engine_label = f"{engine_and_family(settings)[0]}:{settings.model}"[:64]

    def coming(self):
        """The engine's :meth:`~worker.engines.base.Engine.coming`, once it is loaded (the
        first turn loads it inside the turn, where a failure to load is the turn's error)."""
        return self._engine.coming() if self._engine is not None else contextlib.nullcontext()

    @property
    def engine(self) -> Engine:
        if self._engine is None:  # loaded on the first turn, in the process that serves it
            with self._engine_lock:  # once, however many turns arrive together
                if self._engine is None:
                    started = time.perf_counter()
                    engine = self._engine_factory(self.settings)
                    log.info("engine %s (%s) ready in %.1fs", engine.name, engine.family,
                             time.perf_counter() - started)
                    self._engine = engine
        return self._engine


def run(job_id: int, rt: Runtime) -> str:
    """Run turn ``job_id``; return "done", "failed" or "skipped".

    Idempotent: a job that is over, that another live worker is running, or whose
    conversation has an earlier unfinished turn is skipped (the end of that earlier
    turn sends this one again, so a conversation's turns run one at a time, in order,
    each seeing the answers before it). Errors end as a failed job with a readable
    message; none escapes to the worker. While the turn runs, a heartbeat in SQL tells
    the reconciler this worker is alive. When it ends, the conversation's next turn is
    sent. A turn tried ``max_attempts`` times (its workers died) fails for good.
    """
    with rt.coming():  # a batching engine waits a moment for this turn
        return _run(job_id, rt)


def _run(job_id: int, rt: Runtime) -> str:
    settings = rt.settings
    with rt.sessions() as session:
        stale = utcnow() - timedelta(seconds=settings.worker_lost_s)
        job = repo.start_job(session=session, job_id=job_id, engine=rt.engine_label, stale_before=stale)
        if job is None:
            session.commit()
            log.info("job %s is over, running elsewhere or waiting for its turn; skipping", job_id)
            return "skipped"
        platform, language, conversation = job.platform, job.message.language, job.conversation_id
        max_new_tokens = min(job.max_new_tokens or settings.max_new_tokens, settings.max_new_tokens)
        attempts = job.attempts
        turns, blobs = ([], {}) if attempts > settings.max_attempts else _load_context(session, job, settings)
        session.commit()
    if attempts > settings.max_attempts:
        log.error("job %s: given up after %s attempts whose workers died", job_id, attempts - 1)
        return _fail(rt, platform, job_id, conversation, say("too_many_attempts", language))
    _publish(rt, platform, job_id, JobState.RUNNING)
    try:
        with _Heartbeat(rt, job_id):
            following = _answer(job_id, rt, turns, blobs, _streamer(rt, platform, job_id), max_new_tokens)
    except UserFacingError as exc:  # engines' and pictures' errors: the user reads them
        cause = exc.__cause__
        log.warning("job %s failed: %s%s", job_id, exc.message,
                    f" (cause: {type(cause).__name__}: {cause})" if cause else "")
        return _fail(rt, platform, job_id, conversation, exc.text(language))
    except Exception:
        log.exception("job %s crashed", job_id)
        return _fail(rt, platform, job_id, conversation, say("sorry", language))
    rt.redis.delete(events.partial_key(settings.namespace, job_id))
    _publish(rt, platform, job_id, JobState.DONE)
    _send_next(rt, following)
    return "done"


def _next_turn(session, conversation_id: int) -> int | None:
    """In the transaction that ends a turn: the conversation's next turn, marked sent
    (committed with the end, so the reconciler does not also send it at once)."""
    following = repo.next_queued(session=session, conversation_id=conversation_id)
    if following is not None:
        repo.mark_dispatched(session=session, job_ids=[following])
    return following


def _send_next(rt: Runtime, job_id: int | None) -> None:
    """Send the conversation's next turn, now that this one is over."""
    if job_id is None:
        return
    try:
        send_turns(rt.celery, rt.settings, [job_id])
    except Exception:  # the reconciler sends it if this did not
        log.warning("could not send job %s, the next turn of its conversation", job_id, exc_info=True)


class _Heartbeat:
    """Touches the job's heartbeat every ``heartbeat_s`` from a thread while the turn runs,
    up to the turn's time limit (``QVL_TURN_TIME_LIMIT_S``)."""

    def __init__(self, rt: Runtime, job_id: int):
        self.rt, self.job_id = rt, job_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        # Past the turn's time limit the heartbeat stops, on every pool: a turn stalled
        # where Celery cannot stop it (the solo pool) is then redone by another worker, and
        # fails for good after QVL_MAX_ATTEMPTS, instead of holding its conversation forever.
        deadline = time.monotonic() + self.rt.settings.turn_time_limit_s
        while not self._stop.wait(self.rt.settings.heartbeat_s):
            if time.monotonic() > deadline:
                log.error("job %s is past its time limit (%ss); no longer claiming it",
                          self.job_id, self.rt.settings.turn_time_limit_s)
                return
            try:
                with self.rt.sessions() as session:
                    repo.heartbeat(session=session, job_id=self.job_id)
                    session.commit()
            except Exception:  # a database blip: the next beat tries again
                log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)


def _load_context(session, job, settings: Settings) -> tuple[list[StoredTurn], dict]:
    history = repo.context_messages(session=session, conversation_id=job.conversation_id,
                                    up_to_message_id=job.message_id,
                                    max_messages=settings.context_max_messages)
    turns = [_stored(m) for m in history]
    blobs = {sha: repo.get_image(session=session, sha256=sha) for t in turns for sha in t.images}
    return turns, blobs


def _answer(job_id: int, rt: Runtime, turns: list[StoredTurn], blobs: dict,
            on_text: Callable[[str], None], max_new_tokens: int) -> int | None:
    """Answer the turn and store the answer; return the conversation's next turn, if due."""
    settings = rt.settings
    images = _decode_all(blobs, current=turns[-1].images, limits=rt.limits)
    engine = rt.engine
    window = build_window(turns, images=images, system=settings.system_prompt,
                          max_images=settings.context_max_images,
                          token_budget=settings.context_token_budget,
                          count_tokens=engine.count_tokens, image_tokens=engine.image_tokens)
    raw = engine.generate(window.turns, max_new_tokens=max_new_tokens, on_text=on_text)
    with rt.sessions() as session:
        parts = annotate(raw, engine, pictures=window.pictures, images=images,
                         store=lambda data, size: repo.put_image(
                             session=session, data=data, mime="image/jpeg",
                             width=size[0], height=size[1]).sha256)
        answer = repo.finish_job(session=session, job_id=job_id, parts=parts)
        following = _next_turn(session, answer.conversation_id)
        session.commit()
    return following


def _stored(message) -> StoredTurn:
    text = " ".join(p.raw if p.raw is not None else p.text for p in message.parts if isinstance(p, TextPart))
    shas = tuple(p.sha256 for p in message.parts if isinstance(p, ImagePart) and not p.annotated)
    return StoredTurn(message.role, text, shas)


def _decode_all(blobs: dict, *, current: tuple[str, ...], limits: Limits) -> dict[str, Image.Image]:
    """The pictures of the context, decoded. A bad picture of this turn fails the turn with
    its message; a bad one from history is left out (a turn whose picture failed is itself
    left out of later contexts: ``repo.context_messages`` skips failed turns). Running out of
    the turn's time (Celery's soft limit) while decoding fails the turn with a short message.
    """
    images = {}
    for sha, blob in blobs.items():
        if blob is None:
            continue
        try:
            images[sha], _ = decode_image(blob.data, limits)
        except BadImage:
            if sha in current:
                raise  # the picture of this very turn: tell the user
            log.warning("skipping unreadable picture %s from history", sha[:12])
        except SoftTimeLimitExceeded as exc:
            log.warning("turn out of time while decoding picture %s", sha[:12])
            raise BadImage.of("picture_too_slow", s=f"{limits.decode_s:g}") from exc
    return images


def annotate(raw: str, engine: Engine, *, pictures: list[str], images: dict[str, Image.Image],
             store: Callable[[bytes, tuple[int, int]], str]) -> list[Part]:
    """The assistant message's parts: cleaned text, boxes in pixels, annotated pictures.

    Boxes are drawn on the picture the answer names ("Picture 2"), else on the
    latest picture of the window, as the model card's ``draw_bbox_on_latest_picture``.
    """
    parsed = parse(raw, engine.family)
    parts: list[Part] = [TextPart(parsed.text, raw=raw)]
    if parsed.skipped:
        log.info("grounding skipped: %s", "; ".join(parsed.skipped))
    if not parsed.boxes or not pictures:
        return parts
    groups: dict[str, list] = {}
    for box in parsed.boxes:
        n = box.picture
        sha = pictures[n - 1] if n and 1 <= n <= len(pictures) else pictures[-1]
        groups.setdefault(sha, []).append(box)
    for sha, raws in groups.items():
        image = images[sha]
        boxes, skipped = to_pixels(Parsed(parsed.text, tuple(raws)), engine.family,
                                   size=image.size, input_size=engine.input_size(*image.size))
        if skipped:
            log.info("grounding skipped: %s", "; ".join(skipped))
        if not boxes:
            continue
        out = io.BytesIO()
        drawn = draw_boxes(image, boxes)
        drawn.save(out, "JPEG", quality=90)
        parts.append(BoxesPart(sha, tuple(boxes)))
        parts.append(ImagePart(store(out.getvalue(), drawn.size), annotated=True))
    return parts


def _fail(rt: Runtime, platform: str, job_id: int, conversation_id: int, message: str) -> str:
    with rt.sessions() as session:
        repo.fail_job(session=session, job_id=job_id, error=message)
        following = _next_turn(session, conversation_id)
        session.commit()
    rt.redis.delete(events.partial_key(rt.settings.namespace, job_id))
    _publish(rt, platform, job_id, JobState.FAILED)
    _send_next(rt, following)
    return "failed"


def _publish(rt: Runtime, platform: str, job_id: int, state: JobState) -> None:
    try:
        rt.redis.publish(events.channel(rt.settings.namespace, platform), Event(job_id, state).encode())
    except redis_lib.RedisError:  # SQL holds the truth; adapters also sweep it
        log.warning("could not publish %s for job %s", state, job_id)


def _streamer(rt: Runtime, platform: str, job_id: int) -> Callable[[str], None]:
    """An ``on_text`` callback: keeps the partial answer in Redis, at most every interval."""
    last = 0.0

    def on_text(text: str) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < rt.settings.stream_interval_s:
            return
        last = now
        shown = parse(text, rt.engine.family).text  # no half-written markup in partial text
        try:
            rt.redis.set(events.partial_key(rt.settings.namespace, job_id), shown,
                         ex=events.PARTIAL_TTL_S)
        except redis_lib.RedisError:
            return
        _publish(rt, platform, job_id, JobState.STREAMING)

    return on_text
