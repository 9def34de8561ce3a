"""API keys in SQL (storage/keys.py) and what the web frontend reads back
(storage/history.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from qvl.protocol import Box, BoxesPart, ImagePart, TextPart
from storage import history, keys, repo


def test_a_key_is_stored_hashed_found_by_its_secret_and_revoked_for_good(session_factory):
    with session_factory() as session:
        key, secret = keys.create_key(session=session, name="alice", rate_limit=5)
        session.commit()
        assert secret.startswith("qvl-") and len(secret) > 40
        assert key.secret_sha256 == keys.secret_hash(secret) and secret not in (key.prefix + key.secret_sha256)
        assert keys.key_for_secret(session=session, secret=secret).id == key.id
        assert keys.key_for_secret(session=session, secret=secret + "x") is None
        with pytest.raises(keys.KeyNameTaken):
            keys.create_key(session=session, name="alice")
        with pytest.raises(ValueError):
            keys.create_key(session=session, name=" ")
        assert keys.find_key(session=session, name_or_id=str(key.id)).name == "alice"
        assert keys.revoke_key(session=session, key=key) and not keys.revoke_key(session=session, key=key)
        session.commit()
        assert keys.key_for_secret(session=session, secret=secret) is None
        assert keys.active_keys(session=session) == 0
        operator = keys.operator_key(session=session)
        assert keys.operator_key(session=session).id == operator.id


def test_an_answer_is_read_back_with_its_boxes_and_drawing(session_factory):
    with session_factory() as session:
        original = repo.put_image(session=session, data=b"original", mime="image/png", width=640, height=480)
        drawn = repo.put_image(session=session, data=b"drawn", mime="image/jpeg", width=640, height=480)
        conversation = repo.get_or_create_conversation(session=session, platform="web", scope_key="gkey1:cpabc:ukey1")
        _, job, _ = repo.add_user_turn(session=session, conversation=conversation,
                                       parts=[ImagePart(original.sha256), TextPart("box the dog")], platform="web",
                                       platform_message_id="m1", chat_id="pabc", thread_id=None, user_id="key1")
        assert history.outcome(session=session, job_id=job.id) is None  # not finished
        box = Box("dog", (160, 120, 480, 360))
        repo.finish_job(session=session, job_id=job.id, parts=[
            TextPart("a dog", raw="a <ref>dog</ref>"), BoxesPart(original.sha256, (box,)),
            ImagePart(drawn.sha256, annotated=True)])
        session.commit()
        out = history.outcome(session=session, job_id=job.id)
        assert out.text == "a dog" and out.boxes[0].boxes == (box,)
        assert out.annotated[original.sha256].sha256 == drawn.sha256
        assert out.originals[original.sha256].width == 640
        [summary] = history.conversations(session=session, platform="web", prefix="gkey1:cp")
        assert summary.title == "box the dog"
        assert history.conversations(session=session, platform="web", prefix="gkey2:cp") == []
        question, answer = history.entries(session=session, platform="web", scope_key=summary.scope_key)
        assert question.pictures[0].sha256 == original.sha256 and question.state == "done"
        assert answer.boxes and not answer.pictures and answer.annotated


def test_an_imported_history_is_context_for_the_next_turn(session_factory):
    with session_factory() as session:
        conversation = repo.get_or_create_conversation(session=session, platform="web", scope_key="gkey1:ca1:ukey1")
        history.import_turns(session=session, conversation=conversation, platform="web", turns=[
            ("user", [TextPart("hi")]), ("assistant", [TextPart("hello")])])
        _, job, _ = repo.add_user_turn(session=session, conversation=conversation, parts=[TextPart("and?")],
                                       platform="web", platform_message_id="m2", chat_id="a1", thread_id=None,
                                       user_id="key1")
        session.commit()
        context = repo.context_messages(session=session, conversation_id=conversation.id,
                                        up_to_message_id=job.message_id, max_messages=20)
        assert [(m.role, m.parts[0].text) for m in context] == [("user", "hi"), ("assistant", "hello"),
                                                                ("user", "and?")]
        assert context[1].parts[0].raw == "hello"  # what the model sees again
