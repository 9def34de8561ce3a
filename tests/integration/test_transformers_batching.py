"""The transformers engine answers turns that arrive together in one batch, and each
answer is the one the turn would get alone (greedy, float32, tiny random models)."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from worker.engines.base import EngineError
from worker.prompt.turns import ChatTurn

pytest.importorskip("transformers")

SYSTEM = ChatTurn("system", "You are a helpful assistant.", ())


def conversations() -> list[list[ChatTurn]]:
    """Four conversations of different shapes: pictures of several sizes, none, history."""
    return [
        [SYSTEM, ChatTurn("user", "box the dog", (Image.new("RGB", (64, 48), (200, 10, 10)),))],
        [SYSTEM, ChatTurn("user", "what are these? tell me a long story",
                          (Image.new("RGB", (120, 90), (10, 200, 10)), Image.new("RGB", (40, 40), (1, 2, 3))))],
        [SYSTEM, ChatTurn("user", "hello", ())],
        [SYSTEM, ChatTurn("user", "first", (Image.new("RGB", (300, 200), (0, 0, 250)),)),
         ChatTurn("assistant", "an answer", ()), ChatTurn("user", "and now box the thing", ())],
    ]


def at_once(engine, convs, *, max_new_tokens=40, on_text=None) -> list[str | BaseException]:
    """Ask every conversation at the same moment, each from a thread of its own."""
    out: list[str | BaseException] = [""] * len(convs)
    start = threading.Barrier(len(convs))

    def ask(i: int) -> None:
        start.wait()
        try:
            out[i] = engine.generate(convs[i], max_new_tokens=max_new_tokens,
                                     on_text=on_text(i) if on_text else None)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(convs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


@pytest.fixture(params=["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def engine(request, tiny_model_factory):
    from worker.engines.transformers_engine import TransformersEngine

    # A generous wait for company, so that the four turns surely share one batch.
    return TransformersEngine(tiny_model_factory(request.param), batch_max=8, batch_wait_s=0.5)


def test_a_batch_answers_each_turn_as_it_would_be_answered_alone(engine):
    convs = conversations()
    alone = [engine.generate(c, max_new_tokens=40) for c in convs]
    assert engine._batcher.sizes == [1, 1, 1, 1]

    together = at_once(engine, convs)

    assert engine._batcher.sizes[4:] == [4], "the four turns were not answered in one batch"
    assert together == alone  # token for token (greedy, float32, left padding)
    assert len(set(alone)) > 1, "the answers do not even differ: the test could not see a mix-up"


def test_each_turn_streams_its_own_text(engine):
    convs = conversations()
    alone = [engine.generate(c, max_new_tokens=40) for c in convs]
    seen: dict[int, list[str]] = {i: [] for i in range(len(convs))}

    together = at_once(engine, convs, on_text=lambda i: seen[i].append)

    for i, answer in enumerate(together):
        assert seen[i][-1] == answer == alone[i]
        assert all(answer.startswith(part) or part == answer for part in seen[i][:-1])


def test_a_turn_that_fails_fails_alone(engine):
    convs = conversations()
    alone = [engine.generate(c, max_new_tokens=40) for c in convs]
    # A picture the processor cannot resize (1:500), in the second conversation.
    convs[1] = [SYSTEM, ChatTurn("user", "look", (Image.new("RGB", (1000, 2)),))]
    stopped = threading.Event()

    def stop_third(i):
        def on_text(text: str) -> None:
            if i == 2:  # the reader of the third turn goes away mid-answer
                stopped.set()
                raise RuntimeError("reader gone")
        return on_text

    together = at_once(engine, convs, on_text=stop_third)

    assert isinstance(together[1], EngineError)
    assert isinstance(together[2], RuntimeError) and stopped.is_set()
    assert together[0] == alone[0] and together[3] == alone[3]
