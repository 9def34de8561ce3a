"""Hostile pictures through the real worker: a turn whose picture the worker refuses is
answered with a short message, and the conversation goes on (the refused picture never
re-enters the context)."""

from __future__ import annotations

import io

from PIL import Image

from bots.core import Core
from qvl.messages import say
from tests.integration.test_turn_e2e import ask, message, picture, run


def damaged_png() -> bytes:
    """A PNG whose header is sound (the door lets it in) and whose pixels are cut off."""
    buf = io.BytesIO()
    Image.effect_noise((320, 240), 60).convert("RGB").save(buf, "PNG")
    data = buf.getvalue()
    return data[:len(data) // 2]


def test_a_refused_picture_fails_its_turn_briefly_and_the_next_turn_is_answered(settings_for, worker_factory):
    settings = settings_for()
    worker_factory(settings)

    async def scenario():
        core = Core(settings)
        try:
            refused = await ask(core, message("what is this?", [damaged_png()]))
            after = await ask(core, message("hello again"))
            with_picture = await ask(core, message("and this one?", [picture()]))
        finally:
            await core.close()
        return refused, after, with_picture

    refused, after, with_picture = run(scenario())
    assert refused.error and refused.text == say("picture_damaged", "en")
    assert not after.error
    assert "0 picture(s) in 1 turn(s)" in after.text  # the failed turn and its picture are left out
    assert not with_picture.error
    assert "1 picture(s) in 3 turn(s)" in with_picture.text

