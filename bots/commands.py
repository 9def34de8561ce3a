"""Chat commands every frontend shares, in English and Chinese."""

from __future__ import annotations

COMMANDS = {
    "/reset": "reset", "/new": "reset", "重置": "reset", "/重置": "reset",
    "/help": "help", "帮助": "help", "/帮助": "help",
}

HELP = {
    "en": ("Send me a picture and a question about it; I remember the conversation.\n"
           "Ask me to box or point at things (\"box the dog\") and I send the picture back "
           "with the boxes drawn.\n"
           "/reset — forget this conversation · /help — this message"),
    "zh": ("发一张图片并提问，我会记住对话内容。\n"
           "让我框出物体（例如“框出狗”），我会把画好框的图片发回来。\n"
           "重置 — 清空本次对话 · 帮助 — 显示本说明"),
}

MESSAGES = {
    "reset": {"en": "Done: I have forgotten this conversation.", "zh": "好的，本次对话已清空。"},
    "empty": {"en": "Send me a question, a picture, or both.", "zh": "请发送问题或图片。"},
    "too_many_images": {"en": "That is too many pictures for one message (at most {n}).",
                        "zh": "一条消息里的图片太多了（最多 {n} 张）。"},
    "not_an_image": {"en": "That file is not a picture I can read (PNG, JPEG, WebP or GIF, please).",
                     "zh": "无法识别这个文件，请发送 PNG、JPEG、WebP 或 GIF 图片。"},
    "image_too_large": {"en": "That picture is too large (the limit is {mb} MB).",
                        "zh": "图片太大（上限 {mb} MB）。"},
    "rate_limited": {"en": "You are sending questions too fast: please wait {s} s.",
                     "zh": "提问太频繁了，请 {s} 秒后再试。"},
    "busy": {"en": "Sorry, I could not queue that just now. Please try again in a moment.",
             "zh": "抱歉，暂时无法处理，请稍后再试。"},
}


def command_of(text: str) -> str | None:
    """The command a message is ("reset", "help"), or None for an ordinary message."""
    word = text.strip().split(maxsplit=1)[0].lower() if text.strip() else ""
    word = word.split("@", 1)[0]  # "/reset@botname" as Telegram-style clients write it
    return COMMANDS.get(word)


def say(key: str, language: str | None, **values: object) -> str:
    """A short user-facing message in the user's language (English by default)."""
    table = HELP if key == "help" else MESSAGES[key]
    return table.get(language or "en", table["en"]).format(**values)
