from bots.commands import command_of
from qvl.messages import say


def test_commands_in_english_and_chinese():
    assert command_of("/reset") == command_of("重置") == command_of(" /reset please") == "reset"
    assert command_of("/help") == command_of("帮助") == command_of("/help@qvlbot") == "help"
    assert command_of("what is /reset?") is None and command_of("") is None


def test_messages_in_the_users_language():
    assert "forgotten" in say("reset", None) and "清空" in say("reset", "zh")
    assert "8" in say("too_many_images", "en", n=8)
