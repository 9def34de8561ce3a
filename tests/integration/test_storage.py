"""Storage against real databases: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, timedelta
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from qvl.protocol import Box, BoxesPart
from storage import repo
from storage.db import current_revision, head_revision, upgrade
from storage.models import Base, Conversation, Image, Job, Message, utcnow

# Until tests/conftest.py re-exports them for every test module.

T = TypeVar("T")
Factory = sessionmaker[Session]


def text(value: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": value}]


def race(n: int, work: Callable[[], T]) -> list[T]:
    """Run ``work`` in ``n`` threads released at the same moment; return the results."""
    barrier = threading.Barrier(n)

    def run() -> T:
        barrier.wait(timeout=10)
        return work()

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(run) for _ in range(n)]
        return [future.result(timeout=60) for future in futures]


def new_conversation(factory: Factory, scope_key: str = "chan-1") -> Conversation:
    with factory() as session:
        conversation = repo.get_or_create_conversation(
            session=session, platform="discord", scope_key=scope_key
        )
        session.commit()
        return conversation


def user_turn(
    session: Session, conversation: Conversation, platform_message_id: str | None, words: str
) -> tuple[Message, Job, bool]:
    return repo.add_user_turn(
        session=session,
        conversation=conversation,
        parts=text(words),
        platform="discord",
        platform_message_id=platform_message_id,
        chat_id="chan-1",
        thread_id=None,
        user_id="u1",
        user_name="Ada",
    )


def answered_turn(factory: Factory, conversation: Conversation, pmid: str, words: str) -> Job:
    with factory() as session:
        _, job, _ = user_turn(session, conversation, pmid, words)
        session.commit()
    with factory() as session:
        repo.start_job(session=session, job_id=job.id, engine="fake")
        repo.finish_job(session=session, job_id=job.id, parts=text(f"re: {words}"))
        session.commit()
        return repo.get_job(session=session, job_id=job.id)


def test_migrations_run_from_empty_to_head(db_url: str) -> None:
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    upgrade(db_url)  # a second start-up is a no-op
    assert current_revision(db_url) == head_revision()


def test_models_match_migrations(db_engine: Engine) -> None:
    with db_engine.connect() as connection:
        options = {"compare_type": True, "compare_server_default": True}
        context = MigrationContext.configure(connection, opts=options)
        assert compare_metadata(context, Base.metadata) == []


def test_same_image_is_stored_once(session_factory: Factory) -> None:
    data = b"\x89PNG fake picture bytes"
    with session_factory() as session:
        first = repo.put_image(session=session, data=data, mime="image/png", width=4, height=3)
        session.commit()
    with session_factory() as session:
        second = repo.put_image(session=session, data=data, mime="image/png", width=4, height=3)
        session.commit()
        assert second.sha256 == first.sha256
        assert session.scalar(select(func.count()).select_from(Image)) == 1
        stored = repo.get_image(session=session, sha256=first.sha256)
        assert stored is not None and stored.data == data and stored.size == len(data)
        assert repo.get_image(session=session, sha256="0" * 64) is None


def test_same_image_from_four_threads_is_stored_once(session_factory: Factory) -> None:
    data = b"another picture"

    def put() -> str:
        with session_factory() as session:
            image = repo.put_image(session=session, data=data, mime="image/jpeg", width=1, height=1)
            session.commit()
            return image.sha256

    assert len(set(race(4, put))) == 1
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 1


def test_conversation_created_once_by_racing_threads(session_factory: Factory) -> None:
    ids = race(4, lambda: new_conversation(session_factory, "dm-42").id)
    assert len(set(ids)) == 1
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Conversation)) == 1


def test_duplicate_platform_message_makes_one_turn(session_factory: Factory) -> None:
    conversation = new_conversation(session_factory)
    with session_factory() as session:
        message, job, created = user_turn(session, conversation, "m1", "hello")
        session.commit()
    assert created and message.status == "pending" and job.status == "queued"
    assert job.message_id == message.id and job.platform == "discord"
    with session_factory() as session:
        again, again_job, created_again = user_turn(session, conversation, "m1", "hello")
        session.commit()
    assert not created_again
    assert (again.id, again_job.id) == (message.id, job.id)
    with session_factory() as session:  # NULL platform ids never clash
        user_turn(session, conversation, None, "a")
        user_turn(session, conversation, None, "b")
        session.commit()
        assert session.scalar(select(func.count()).select_from(Message)) == 3


def test_duplicate_platform_message_from_two_threads(session_factory: Factory) -> None:
    conversation = new_conversation(session_factory)

    def add() -> tuple[int, int, bool]:
        with session_factory() as session:
            message, job, created = user_turn(session, conversation, "m-race", "hi")
            session.commit()
            return message.id, job.id, created

    results = race(2, add)
    assert sorted(created for _, _, created in results) == [False, True]
    assert len({(m, j) for m, j, _ in results}) == 1
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 1
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_context_window_order_limit_and_reset(session_factory: Factory) -> None:
    conversation = new_conversation(session_factory)
    for i in range(3):
        answered_turn(session_factory, conversation, f"m{i}", f"q{i}")
    with session_factory() as session:
        current, _, _ = user_turn(session, conversation, "m3", "q3")
        session.commit()

    def window(up_to: int, limit: int = 10) -> list[str]:
        with session_factory() as session:
            messages = repo.context_messages(
                session=session,
                conversation_id=conversation.id,
                up_to_message_id=up_to,
                max_messages=limit,
            )
            return [m.parts[0].text for m in messages]

    assert window(current.id) == ["q0", "re: q0", "q1", "re: q1", "q2", "re: q2", "q3"]
    assert window(current.id, limit=3) == ["q2", "re: q2", "q3"]

    with session_factory() as session:
        repo.reset_conversation(session=session, conversation=conversation)
        session.commit()
    assert conversation.context_floor == current.id
    assert window(current.id) == ["q3"]  # the current turn survives the reset
    with session_factory() as session:
        after, _, _ = user_turn(session, conversation, "m4", "q4")
        session.commit()
    assert window(after.id) == ["q4"]
    with session_factory() as session:  # history is kept for audit
        count = select(func.count()).select_from(Message)
        assert session.scalar(count.where(Message.conversation_id == conversation.id)) == 8


def test_context_skips_failed_and_cancelled_turns(session_factory: Factory) -> None:
    conversation = new_conversation(session_factory)
    answered_turn(session_factory, conversation, "m0", "kept")
    with session_factory() as session:
        _, failed, _ = user_turn(session, conversation, "m1", "failed")
        _, cancelled, _ = user_turn(session, conversation, "m2", "cancelled")
        current, _, _ = user_turn(session, conversation, "m3", "now")
        session.commit()
    with session_factory() as session:
        repo.fail_job(session=session, job_id=failed.id, error="out of memory")
        session.execute(update(Job).where(Job.id == cancelled.id).values(status="cancelled"))
        session.commit()
        messages = repo.context_messages(
            session=session,
            conversation_id=conversation.id,
            up_to_message_id=current.id,
            max_messages=10,
        )
    assert [m.parts[0].text for m in messages] == ["kept", "re: kept", "now"]


def test_job_lifecycle_queued_running_done(session_factory: Factory) -> None:
    conversation = new_conversation(session_factory)
    with session_factory() as session:
        message, job, _ = user_turn(session, conversation, "m1", "what is this?")
        session.commit()
    with session_factory() as session:
        running = repo.start_job(session=session, job_id=job.id, engine="qwen2.5-vl")
        session.commit()
    assert running is not None and running.status == "running" and running.attempts == 1
    assert running.engine == "qwen2.5-vl" and running.started_at is not None
    boxes = [BoxesPart("a" * 64, (Box("cat", (1, 2, 3, 4)),))]
    with session_factory() as session:
        reply = repo.finish_job(session=session, job_id=job.id, parts=text("a cat") + boxes)
        session.commit()
    with session_factory() as session:
        done = repo.get_job(session=session, job_id=job.id)
        user = repo.get_message(session=session, message_id=message.id)
        stored = repo.get_message(session=session, message_id=reply.id)
    assert done is not None and done.status == "done" and done.reply_message_id == reply.id
    assert done.finished_at is not None and done.finished_at.tzinfo is not None
    assert done.finished_at.utcoffset() == timedelta(0)
    assert user is not None and user.status == "done"
    assert stored is not None and stored.role == "assistant" and stored.status == "done"
    assert stored.in_reply_to == message.id and stored.conversation_id == conversation.id
    assert (stored.platform, stored.chat_id) == ("discord", "chan-1")
    assert stored.parts[1].boxes[0].box == (1, 2, 3, 4)
    with session_factory() as session:  # a redelivered task finishing again changes nothing
        assert repo.finish_job(session=session, job_id=job.id, parts=text("x")).id == reply.id
        session.commit()
        assert session.scalar(select(func.count()).select_from(Message)) == 2


def test_start_job_is_idempotent_for_redelivered_tasks(session_factory: Factory) -> None:
    conversation = new_conversation(session_factory)
    with session_factory() as session:
        _, job, _ = user_turn(session, conversation, "m1", "hi")
        session.commit()
    with session_factory() as session:
        assert repo.start_job(session=session, job_id=job.id, engine="e") is not None
        session.commit()
    with session_factory() as session:  # the worker died mid-turn; the task comes back
        again = repo.start_job(session=session, job_id=job.id, engine="e")
        session.commit()
    assert again is not None and again.status == "running" and again.attempts == 2
    with session_factory() as session:
        repo.finish_job(session=session, job_id=job.id, parts=text("ok"))
        session.commit()
    with session_factory() as session:
        assert repo.start_job(session=session, job_id=job.id, engine="e") is None
        with pytest.raises(LookupError):
            repo.start_job(session=session, job_id=10_000, engine="e")


def test_fail_job(session_factory: Factory) -> None:
    conversation = new_conversation(session_factory)
    with session_factory() as session:
        message, job, _ = user_turn(session, conversation, "m1", "hi")
        session.commit()
    with session_factory() as session:
        repo.start_job(session=session, job_id=job.id, engine="e")
        failed = repo.fail_job(session=session, job_id=job.id, error="  CUDA out of memory \n")
        session.commit()
    assert failed.status == "failed" and failed.error == "CUDA out of memory"
    assert failed.finished_at is not None
    with session_factory() as session:
        user = repo.get_message(session=session, message_id=message.id)
        assert user is not None and user.status == "failed"
        assert repo.start_job(session=session, job_id=job.id, engine="e") is None
        with pytest.raises(repo.JobStateError):
            repo.finish_job(session=session, job_id=job.id, parts=text("late"))
    with session_factory() as session:  # a duplicate run that succeeded is not undone
        _, other, _ = user_turn(session, conversation, "m2", "again")
        session.commit()
    finished = answered_turn(session_factory, conversation, "m2", "again")
    assert finished.id == other.id
    with session_factory() as session:
        late = repo.fail_job(session=session, job_id=other.id, error="late crash")
        session.commit()
    assert late.status == "done" and late.error is None


def test_queue_positions(session_factory: Factory) -> None:
    conversation = new_conversation(session_factory)
    with session_factory() as session:
        jobs = [user_turn(session, conversation, f"m{i}", "q")[1] for i in range(4)]
        session.commit()
    ids = [job.id for job in jobs]

    def positions() -> list[int | None]:
        with session_factory() as session:
            return [repo.queue_position(session=session, job_id=i) for i in ids]

    assert positions() == [1, 2, 3, 4]
    with session_factory() as session:
        repo.start_job(session=session, job_id=ids[0], engine="e")
        repo.fail_job(session=session, job_id=ids[2], error="bad picture")
        session.commit()
    assert positions() == [None, 1, None, 2]
    with session_factory() as session:
        failed = repo.get_job(session=session, job_id=ids[2])
        assert failed is not None and failed.status == "failed"
        assert repo.start_job(session=session, job_id=ids[2], engine="e") is None


def test_a_delivery_lease_goes_to_one_of_four_threads_until_acknowledged_or_released(
        session_factory: Factory) -> None:
    conversation = new_conversation(session_factory)
    job = answered_turn(session_factory, conversation, "m1", "hi")

    def claim() -> bool:
        with session_factory() as session:
            won = repo.claim_delivery(session=session, job_id=job.id, lease_s=60)
            session.commit()
            return won

    def state():
        with session_factory() as session:
            return repo.get_job(session=session, job_id=job.id)

    assert sorted(race(4, claim)) == [False, False, False, True]
    assert state().delivered_at is None and state().lease_until is not None  # leased, not delivered
    with session_factory() as session:  # the send failed: offered again (here at once)
        repo.release_delivery(session=session, job_id=job.id, retry_in_s=0)
        session.commit()
    assert sorted(race(4, claim)) == [False, False, False, True]
    with session_factory() as session:
        repo.ack_delivery(session=session, job_id=job.id)
        session.commit()
    assert not claim()
    delivered = state()
    assert delivered.delivered_at is not None and delivered.delivered_at.tzinfo == UTC
    assert delivered.delivery_attempts == 2


def test_replies_are_offered_one_per_conversation_in_order(session_factory: Factory) -> None:
    conversation = new_conversation(session_factory)
    first = answered_turn(session_factory, conversation, "m1", "one")
    with session_factory() as session:
        _, failed, _ = user_turn(session, conversation, "m2", "two")
        repo.fail_job(session=session, job_id=failed.id, error="boom")
        session.commit()
    second = answered_turn(session_factory, conversation, "m3", "three")
    with session_factory() as session:
        _, queued, _ = user_turn(session, conversation, "m4", "four")  # not finished yet
        session.commit()
    elsewhere = answered_turn(session_factory, new_conversation(session_factory, "chan-2"), "n1", "hi")

    def pending() -> list[int]:
        with session_factory() as session:
            return [job.id for job in repo.undelivered_jobs(session=session, platform="discord")]

    def ack(job_id: int) -> None:
        with session_factory() as session:
            repo.ack_delivery(session=session, job_id=job_id)
            session.commit()

    assert pending() == [first.id, elsewhere.id]  # the oldest of each conversation
    with session_factory() as session:
        jobs = repo.undelivered_jobs(session=session, platform="discord")
        assert jobs[0].reply_message is not None and jobs[0].message.platform_message_id == "m1"
        assert repo.claim_delivery(session=session, job_id=second.id, lease_s=60) is False  # not its turn
        session.commit()
    ack(first.id)
    assert pending() == [failed.id, elsewhere.id]
    ack(failed.id)
    assert pending() == [second.id, elsewhere.id]
    ack(second.id)
    assert queued.id not in pending()


def test_turns_of_one_conversation_start_in_order_and_a_lost_worker_is_taken_over(
        session_factory: Factory) -> None:
    conversation = new_conversation(session_factory)
    with session_factory() as session:
        jobs = [user_turn(session, conversation, f"m{i}", "q")[1] for i in range(2)]
        session.commit()
    now = utcnow()
    with session_factory() as session:
        assert repo.start_job(session=session, job_id=jobs[1].id, engine="e", stale_before=now) is None
        assert repo.start_job(session=session, job_id=jobs[0].id, engine="e", stale_before=now) is not None
        session.commit()
    with session_factory() as session:  # its worker is alive: nobody else may run it
        fresh = now - timedelta(seconds=30)
        assert repo.start_job(session=session, job_id=jobs[0].id, engine="e", stale_before=fresh) is None
        assert [j.id for j in repo.pending_heads(session=session, dispatched_before=now,
                                                 stale_before=fresh)] == []
        later = utcnow() + timedelta(seconds=30)  # …until its heartbeat is older than that
        assert [j.id for j in repo.pending_heads(session=session, dispatched_before=now,
                                                 stale_before=later)] == [jobs[0].id]
        taken = repo.start_job(session=session, job_id=jobs[0].id, engine="e", stale_before=later)
        assert taken is not None and taken.attempts == 2
        session.commit()


def test_replies_to_the_bot_lead_back_to_the_conversation(session_factory: Factory) -> None:
    conversation = new_conversation(session_factory)
    job = answered_turn(session_factory, conversation, "m1", "hi")
    assert job.reply_message_id is not None
    with session_factory() as session:
        repo.set_platform_message_id(
            session=session, message_id=job.reply_message_id, platform_message_id="bot-7"
        )
        session.commit()
        found = repo.conversation_for_platform_message(
            session=session, platform="discord", platform_message_id="bot-7"
        )
        assert found is not None and found.id == conversation.id
        missing = repo.conversation_for_platform_message(
            session=session, platform="wechat", platform_message_id="bot-7"
        )
        assert missing is None


def test_space_settings_merge_and_remove(session_factory):
    with session_factory() as session:
        assert repo.space_settings(session=session, platform="discord", space_id="g1") == {}
        repo.update_space_settings(session=session, platform="discord", space_id="g1",
                                   changes={"scope": "channel", "channels": ["1", "2"]})
        session.commit()
    with session_factory() as session:
        values = repo.update_space_settings(session=session, platform="discord", space_id="g1",
                                            changes={"channels": None})
        session.commit()
    assert values == {"scope": "channel"}
    with session_factory() as session:
        assert repo.space_settings(session=session, platform="discord", space_id="g1") == {"scope": "channel"}
        assert repo.space_settings(session=session, platform="wechat", space_id="g1") == {}


def test_a_question_asked_before_the_previous_answer_was_stored_sees_that_answer(
        session_factory: Factory) -> None:
    conversation = new_conversation(session_factory)
    with session_factory() as session:  # both questions arrive before either is answered
        _, first, _ = user_turn(session, conversation, "m1", "what is it?")
        second_msg, second, _ = user_turn(session, conversation, "m2", "and its colour?")
        session.commit()
    with session_factory() as session:
        repo.start_job(session=session, job_id=first.id, engine="e")
        repo.finish_job(session=session, job_id=first.id, parts=text("a cat"))  # stored after m2
        session.commit()
        messages = repo.context_messages(session=session, conversation_id=conversation.id,
                                         up_to_message_id=second_msg.id, max_messages=10)
    assert [(m.role, m.parts[0].text) for m in messages] == [
        ("user", "what is it?"), ("assistant", "a cat"), ("user", "and its colour?")]
