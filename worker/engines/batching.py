"""Turns that wait while the model is busy are answered together, in one batch.

The worker runs many turns at once on threads (``QVL_WORKER_CONCURRENCY``); each hands
its encoded prompt to the :class:`Batcher` and reads its own answer's token ids from a
queue. One thread owns the model: when it is free, it takes every request waiting (up
to ``max_size``, after waiting ``wait_s`` for company when it was idle) and runs them as
one batch. Each request ends on its own (its stop token, its length, its cancel flag),
so a short answer is finished, stored and delivered while longer ones still grow.

Static batching: a request arriving while a batch runs waits for the next one. This is
what transformers' ``generate`` can do with pictures today (its continuous batching
takes token ids only); vLLM and SGLang do continuous batching behind the openai engine.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

GATHER_MAX_S = 0.25  # the longest an idle model waits for announced turns before it starts
HAND_EVERY_S = 0.02  # the least time between two hand-overs of new ids to a request's reader


@dataclass(eq=False)
class Request:
    """One turn's generation: its encoded prompt in, its token ids out.

    ``tokens`` receives lists of new token ids, then ``None`` once the request is over
    (ended, cancelled or failed: ``error`` is set before the ``None`` when it failed).
    Set ``cancel`` to stop generating for it.
    """

    inputs: Any
    max_new_tokens: int
    tokens: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancel: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    produced: int = 0
    over: bool = False
    _held: list[int] = field(default_factory=list)
    _handed_at: float = 0.0

    def emit(self, ids: list[int], stop_ids: set[int]) -> None:
        """Take new ids; end the request at a stop id or at its length. The reader gets
        them at most every ``HAND_EVERY_S`` (and at the end): a reader woken at every
        token of every row takes the model's thread's turn at the GIL, step after step."""
        if self.over:
            return
        kept = ids[: self.max_new_tokens - self.produced]
        self.produced += len(kept)
        self._held.extend(kept)
        if any(i in stop_ids for i in kept) or self.produced >= self.max_new_tokens or self.cancel.is_set():
            self.end()
        elif time.monotonic() - self._handed_at >= HAND_EVERY_S:
            self._hand()

    def _hand(self) -> None:
        if self._held:
            self.tokens.put(self._held)
            self._held = []
        self._handed_at = time.monotonic()

    def end(self, error: BaseException | None = None) -> None:
        if not self.over:
            self.over = True
            self.error = error
            self._hand()
            self.tokens.put(None)


class Batcher:
    """Collects :class:`Request` objects and hands them, a batch at a time, to
    ``run_batch`` on one thread of its own (started on the first request)."""

    def __init__(self, run_batch: Callable[[list[Request]], None], *, max_size: int, wait_s: float):
        self.run_batch, self.max_size, self.wait_s = run_batch, max(1, max_size), max(0.0, wait_s)
        self._waiting: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._coming = 0  # turns announced (`coming`) and not yet submitted
        self._local = threading.local()
        self.sizes: list[int] = []  # the size of each batch run so far (for tests and logs)

    @contextlib.contextmanager
    def coming(self) -> Iterator[None]:
        """Announce, for the span of a turn on this thread, that a request is on its way
        (the turn is reading its context): a batch about to start waits for it, up to
        ``GATHER_MAX_S``, instead of leaving it for the next batch."""
        with self._lock:
            self._coming += 1
        self._local.announced = True
        try:
            yield
        finally:
            self._withdraw()

    def _withdraw(self) -> None:
        if getattr(self._local, "announced", False):
            self._local.announced = False
            with self._lock:
                self._coming -= 1

    def submit(self, request: Request) -> Request:
        """Queue ``request`` for the next batch; read its ``tokens`` for the answer."""
        self._withdraw()  # it has arrived
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="qvl-batcher", daemon=True)
                self._thread.start()
                atexit.register(self.stop)  # torch aborts a process that exits under a running thread
        self._waiting.put(request)
        return request

    def stop(self) -> None:
        """Let the batch in progress finish, then end the batcher's thread."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._waiting.put(None)
            thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            if not batch:
                continue
            self.sizes.append(len(batch))
            if len(batch) > 1:
                log.info("answering %d turns in one batch", len(batch))
            try:
                self.run_batch(batch)
            except BaseException as exc:  # noqa: BLE001 - each reader raises it in its own thread
                for request in batch:
                    request.end(exc)
            finally:
                for request in batch:
                    request.end()

    def _collect(self) -> list[Request] | None:
        first = self._waiting.get()
        if first is None:
            return None
        batch = [first] if not first.cancel.is_set() else []
        # An idle model waits a moment for company: ``wait_s`` after the latest arrival, and
        # as long as turns it was told of are still on their way (`coming`), up to
        # GATHER_MAX_S: a crowd's turns reach the engine some milliseconds apart.
        start = last = time.monotonic()
        while len(batch) < self.max_size:
            now = time.monotonic()
            with self._lock:
                expected = self._coming > 0
            until = start + GATHER_MAX_S if expected else last + self.wait_s
            if now >= min(until, start + GATHER_MAX_S):
                break
            try:
                request = self._waiting.get(timeout=min(0.005, until - now))
            except queue.Empty:
                continue
            if request is None:
                self._waiting.put(None)  # stop after this batch
                break
            if request.cancel.is_set():
                request.end()
            else:
                batch.append(request)
                last = time.monotonic()
        if first.cancel.is_set():
            first.end()
        return batch
