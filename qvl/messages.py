"""Every sentence a chat user reads, in English and Chinese, and the language detector.

One table, so that the worker, the core and every frontend say the same thing in
the user's language. Keys are stable; values are ``str.format`` templates.
"""

from __future__ import annotations

import re

Language = str  # "en" or "zh"; None means English

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

HELP = {
    "en": ("Send me a picture and a question about it; I remember the conversation.\n"
           "Ask me to box or point at things (\"box the dog\") and I send the picture back "
           "with the boxes drawn.\n"
           "/reset — forget this conversation · /help — this message\n"
           "Admins: /scope user|shared|thread — whose history a conversation shares"),
    "zh": ("发一张图片并提问，我会记住对话内容。\n"
           "让我框出物体（例如“框出狗”），我会把画好框的图片发回来。\n"
           "重置 — 清空本次对话 · 帮助 — 显示本说明\n"
           "管理员：/scope user|shared|thread（范围 个人|共享|话题）— 设置对话范围"),
}

MESSAGES: dict[str, dict[str, str]] = {
    # the core
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
    "over_share_user": {"en": "You already have {n} question(s) waiting for an answer: please wait for them "
                                "before asking more.",
                        "zh": "你已有 {n} 个问题在等待回答，请等回答后再问。"},
    "over_share_space": {"en": "This server or group already has {n} questions waiting: please ask again in a "
                                 "moment.",
                         "zh": "本群已有 {n} 个问题在排队，请稍后再问。"},
    "busy": {"en": "Sorry, I could not queue that just now. Please try again in a moment.",
             "zh": "抱歉，暂时无法处理，请稍后再试。"},
    "not_allowed": {"en": "I am not enabled in this channel.", "zh": "本群未开启机器人。"},
    "admins_only": {"en": "Only admins can change my settings.", "zh": "只有管理员可以修改设置。"},
    "scope_usage": {"en": "Usage: /scope user (each person their own conversation), /scope shared "
                          "(one for everyone here) or /scope thread (one per thread).",
                    "zh": "用法：/scope user（每人独立对话）、/scope shared（全群共享）或 /scope thread（每个话题一个）。"},
    "scope_set": {"en": "Conversation scope: {scope}. Answering in: {channels}.",
                  "zh": "对话范围：{scope}。回答范围：{channels}。"},
    "any_channel": {"en": "any channel", "zh": "所有频道"},
    "scope_user": {"en": "user (each person their own conversation)", "zh": "个人（每人独立对话）"},
    "scope_shared": {"en": "shared (one conversation for everyone here)", "zh": "共享（全群共享对话）"},
    "scope_thread": {"en": "thread (one conversation per thread)", "zh": "话题（每个话题一个对话）"},
    "text_too_long": {"en": "That message is too long ({n} characters; the limit is {limit}). "
                            "Please send a shorter one.",
                      "zh": "消息太长了（{n} 个字符，上限 {limit} 个），请发短一点。"},
    "queued": {"en": "⏳ Queued: {ahead} question(s) ahead of yours.", "zh": "⏳ 排队中：前面还有 {ahead} 个问题。"},
    # WeCom (bots/wecom/)
    "thinking": {"en": "⏳ Thinking…", "zh": "⏳ 思考中…"},
    "picture_late": {"en": "(The picture with the boxes cannot follow: the answer came after WeCom's reply "
                           "window closed. Ask again to get it.)",
                     "zh": "（回答超出了企业微信的回复时限，画好框的图片无法附上，请重新提问获取。）"},
    # links (bots/fetch.py)
    "link_status": {"en": "That link answered {status}; I could not get the picture.",
                    "zh": "链接返回了 {status}，无法获取图片。"},
    "link_redirects": {"en": "That link redirects too many times.", "zh": "链接重定向次数过多。"},
    "link_private": {"en": "I can only fetch pictures from public addresses.", "zh": "只能从公网地址获取图片。"},
    "link_unreachable": {"en": "I could not reach that link.", "zh": "无法访问这个链接。"},
    "link_timeout": {"en": "That link took too long to answer.", "zh": "链接响应超时。"},
    "link_failed": {"en": "I could not download that link.", "zh": "无法下载这个链接。"},
    "link_scheme": {"en": "I can only fetch http(s) links.", "zh": "只能获取 http(s) 链接。"},
    "link_not_picture": {"en": "That link is not a picture I can read.", "zh": "这个链接不是可以识别的图片。"},
    # delivery and the worker
    "too_many_attempts": {"en": "Sorry, I could not answer that: the attempts kept failing. Please ask again.",
                          "zh": "抱歉，多次尝试都失败了，请重新提问。"},
    "sorry": {"en": "Sorry, something went wrong while answering. Please try again.",
              "zh": "抱歉，回答时出了点问题，请稍后再试。"},
    "picture_too_large_mb": {"en": "That picture is too large ({size} MB; the limit is {mb} MB).",
                             "zh": "图片太大（{size} MB，上限 {mb} MB）。"},
    "too_many_pixels": {"en": "That picture has too many pixels ({width}×{height}).",
                        "zh": "图片像素过多（{width}×{height}）。"},
    "picture_unsafe": {"en": "That picture is too large to open safely.", "zh": "图片过大，无法安全打开。"},
    "picture_unreadable": {"en": "That file is not a picture I can read.", "zh": "无法识别这个文件的图片格式。"},
    "picture_damaged": {"en": "That picture seems to be damaged.", "zh": "图片似乎已损坏。"},
    "picture_unread": {"en": "I could not read that picture.", "zh": "无法读取这张图片。"},
    # pictures refused at the door (bots/pictures.py) or by the worker (worker/images.py)
    "picture_format": {"en": "That file is not a picture I can read: I accept {formats} only.",
                       "zh": "无法识别这个文件：只接受 {formats} 格式的图片。"},
    "picture_too_big_pixels": {"en": "That picture is too large: {width}×{height} pixels "
                                     "(the limit is {mp} million pixels).",
                               "zh": "图片太大：{width}×{height} 像素（上限 {mp} 百万像素）。"},
    "picture_aspect": {"en": "That picture is too long and thin ({width}×{height}): its long side may be "
                             "at most {ratio} times its short side. Please crop it.",
                       "zh": "图片太细长了（{width}×{height}）：长边最多是短边的 {ratio} 倍，请裁剪后再发。"},
    "picture_too_many_scans": {"en": "That JPEG is made of too many progressive scans ({scans}; the limit is "
                                     "{limit}) to decode safely. Please save it as an ordinary JPEG or PNG.",
                               "zh": "这张 JPEG 的渐进扫描次数过多（{scans} 次，上限 {limit} 次），无法安全解码。"
                                     "请另存为普通 JPEG 或 PNG 后再发。"},
    "picture_metadata_too_large": {"en": "That picture carries too much embedded text (metadata over {kb} KB) "
                                         "to open safely. Please save it without metadata.",
                                   "zh": "图片内嵌的文字信息过多（元数据超过 {kb} KB），无法安全打开。"
                                         "请去掉元数据后再发。"},
    "picture_too_slow": {"en": "That picture took too long to decode (over {s} s), so I stopped. "
                               "Please send a simpler picture.",
                         "zh": "这张图片解码太慢（超过 {s} 秒），已停止处理。请换一张简单些的图片。"},
    # engines
    "server_refused": {"en": "The model server refused this request: {detail}",
                       "zh": "模型服务拒绝了这个请求：{detail}"},
    "server_busy": {"en": "The model server is busy right now. Please try again in a minute.",
                    "zh": "模型服务繁忙，请稍后再试。"},
    "server_failed": {"en": "The model server failed ({detail}). Please try again.",
                      "zh": "模型服务出错（{detail}），请稍后再试。"},
    "server_timeout": {"en": "The model server did not answer in time.", "zh": "模型服务响应超时。"},
    "server_broke_off": {"en": "The model server broke off its answer. Please try again.",
                         "zh": "模型服务中断了回答，请稍后再试。"},
    "server_unreadable": {"en": "The model server sent an answer I cannot read.",
                          "zh": "模型服务返回了无法解析的内容。"},
    "server_unreachable": {"en": "The model server cannot be reached right now. Please try again later.",
                           "zh": "暂时无法连接模型服务，请稍后再试。"},
    "model_out_of_memory": {"en": "The model ran out of memory; try /reset or a smaller picture.",
                            "zh": "模型内存不足，请发送“重置”或换一张小一点的图片。"},
    "model_failed": {"en": "The model failed while answering; please try again.",
                     "zh": "模型回答时出错，请稍后再试。"},
    "model_cannot_read": {"en": "The model cannot read this conversation: {detail}",
                          "zh": "模型无法读取这段对话：{detail}"},
    "model_cannot_read_picture": {"en": "The model cannot read this picture: {detail}",
                                  "zh": "模型无法读取这张图片：{detail}"},
}


def language_of(text: str) -> Language | None:
    """"zh" when ``text`` holds Chinese characters, else None (English)."""
    return "zh" if _CJK.search(text or "") else None


def say(key: str, language: Language | None, **values: object) -> str:
    """The message ``key`` in the user's language (English by default)."""
    table = HELP if key == "help" else MESSAGES[key]
    return table.get(language or "en", table["en"]).format(**values)
