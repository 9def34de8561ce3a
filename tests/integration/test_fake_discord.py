"""The loopback Discord fake against the real discord.py: gateway, REST, interactions.

Each test runs a real ``commands.Bot`` against :class:`FakeDiscord`; nothing in
discord.py is patched but its two base URLs.
"""

from __future__ import annotations

import asyncio
import io

import discord
import pytest
from discord.ext import commands
from PIL import Image

from tests.fakes.discord_server import FakeDiscord, running

pytestmark = pytest.mark.timeout(30)


def _intents(*, message_content: bool = True) -> discord.Intents:
    intents = discord.Intents.default()
    intents.message_content = message_content
    intents.members = True
    return intents


class QuickBot(commands.Bot):
    """A bot that becomes ready fast and re-identifies without discord.py's 5 s pause."""

    def __init__(self, **options):
        options.setdefault("intents", _intents())
        # on_ready waits guild_ready_timeout after the last GUILD_CREATE (default 2 s).
        super().__init__(command_prefix="!", guild_ready_timeout=0.1, **options)

    async def before_identify_hook(self, shard_id, *, initial=False):
        return None


def _queue_of(bot: commands.Bot, event: str = "on_message") -> asyncio.Queue:
    queue: asyncio.Queue = asyncio.Queue()

    async def listener(*args):
        await queue.put(args[0] if len(args) == 1 else args)

    bot.add_listener(listener, event)
    return queue


async def _next(queue: asyncio.Queue, timeout: float = 5.0):
    return await asyncio.wait_for(queue.get(), timeout)


def _png(width: int = 4, height: int = 3) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.asyncio
async def test_bot_becomes_ready_and_sees_the_world(fake_discord: FakeDiscord):
    w = fake_discord.world
    bot = QuickBot()
    async with running(bot):
        assert bot.user.id == fake_discord.bot_id
        assert bot.application_id == fake_discord.application_id
        guild = bot.get_guild(w.guild)
        assert guild is not None and guild.chunked
        assert sorted(c.name for c in guild.text_channels) == ["general", "random"]
        alice, bob = guild.get_member(w.alice), guild.get_member(w.bob)
        assert alice.name == "alice" and bob.name == "bob"
        assert alice.guild_permissions.administrator and not bob.guild_permissions.administrator
        assert guild.get_role(w.admin_role) in alice.roles
        assert guild.me.id == fake_discord.bot_id
        assert bot.latency < 1  # the first heartbeat was acknowledged
    paths = [(c.method, c.path) for c in fake_discord.requests]
    assert ("GET", "/users/@me") in paths and ("GET", "/oauth2/applications/@me") in paths
    assert fake_discord.identify_count == 1
    assert fake_discord.gateway_connections[0][1]["v"] == "10"


@pytest.mark.asyncio
async def test_mention_gets_a_reply_with_a_file(fake_discord: FakeDiscord):
    w = fake_discord.world
    bot = QuickBot()
    seen = _queue_of(bot)

    @bot.listen()
    async def on_message(message: discord.Message):
        if bot.user in message.mentions and message.author != bot.user:
            await message.reply("pong", file=discord.File(io.BytesIO(b"box 1 2 3 4"), "boxes.txt"))

    async with running(bot):
        sent = await fake_discord.user_message(w.general, w.alice, f"<@{fake_discord.bot_id}> ping")
        incoming = await _next(seen)
        assert incoming.content == f"<@{fake_discord.bot_id}> ping"
        assert isinstance(incoming.author, discord.Member) and incoming.author.id == w.alice
        assert isinstance(incoming.channel, discord.TextChannel)

        [reply] = await fake_discord.wait_for_sent(channel_id=w.general)
        assert reply.content == "pong" and reply.via == "channel"
        assert reply.files == [("boxes.txt", b"box 1 2 3 4")]
        assert reply.reply_to == int(sent["id"])
        assert reply.payload["referenced_message"]["id"] == sent["id"]

        echoed = await _next(seen)  # Discord echoes the bot's own message over the gateway
        assert echoed.author == bot.user and echoed.reference.message_id == int(sent["id"])
        assert echoed.attachments[0].filename == "boxes.txt"
        assert await echoed.attachments[0].read() == b"box 1 2 3 4"


@pytest.mark.asyncio
async def test_typing_edit_and_fetch(fake_discord: FakeDiscord):
    w = fake_discord.world
    bot = QuickBot()
    done: asyncio.Queue = asyncio.Queue()

    @bot.listen()
    async def on_message(message: discord.Message):
        if message.author.bot:
            return
        async with message.channel.typing():
            draft = await message.channel.send("thinking…")
        await draft.edit(content="the answer")
        await message.add_reaction("👀")
        fetched = await message.channel.fetch_message(message.id)
        mine = await message.channel.fetch_message(draft.id)
        await done.put((fetched, mine))

    async with running(bot):
        sent = await fake_discord.user_message(w.random, w.bob, "what is it?")
        fetched, mine = await _next(done)
        assert fetched.id == int(sent["id"]) and fetched.content == "what is it?"
        assert fetched.author.id == w.bob
        assert mine.content == "the answer" and mine.edited_at is not None
    assert [t.channel_id for t in fake_discord.typing] == [w.random]
    [edit] = fake_discord.edits
    assert edit.content == "the answer" and edit.message_id == mine.id
    assert fake_discord.sent[0].content == "thinking…"
    assert ("MESSAGE_UPDATE", edit.payload) in fake_discord.dispatched
    assert [(r.emoji, r.message_id) for r in fake_discord.reactions] == [("👀", fetched.id)]


@pytest.mark.asyncio
async def test_a_repeated_nonce_returns_the_first_message_and_posts_nothing(fake_discord: FakeDiscord):
    """discord.py sends ``enforce_nonce: true`` with a nonce: Discord then answers a second
    create with the same nonce, author and channel within a few minutes with the first
    message (200, same id) and creates nothing."""
    w = fake_discord.world
    bot = QuickBot()
    created = _queue_of(bot)
    async with running(bot):
        general, random = bot.get_channel(w.general), bot.get_channel(w.random)
        first = await general.send("the answer", nonce="qvl42.0")
        assert (await _next(created)).id == first.id
        again = await general.send("the answer, posted again", nonce="qvl42.0")
        assert again.id == first.id and again.content == "the answer"  # the first, unchanged
        assert first.nonce == again.nonce == "qvl42.0"
        # Another nonce, or the same one in another channel: new messages.
        other = await general.send("part two", nonce="qvl42.1")
        elsewhere = await random.send("the answer", nonce="qvl42.0")
        assert len({first.id, other.id, elsewhere.id}) == 3
        # Without enforce_nonce a nonce is only echoed (discord.py always enforces it).
        raw = await bot.http.request(discord.http.Route("POST", "/channels/{channel_id}/messages",
                                                        channel_id=w.general),
                                     json={"content": "unenforced", "nonce": "qvl42.0"})
        assert int(raw["id"]) not in (first.id, other.id)
        # Remembered for a few minutes only.
        fake_discord.nonce_window_s = 0.0
        later = await general.send("much later", nonce="qvl42.1")
        assert later.id != other.id
        with pytest.raises(discord.HTTPException, match="25 or fewer"):
            await general.send("too long a nonce", nonce="q" * 26)
        fake_discord.nonce_window_s = 300.0
        await later.delete()  # discord.py: NotFound for the nonce of a message deleted shortly before
        with pytest.raises(discord.NotFound):
            await general.send("much later, again", nonce="qvl42.1")
        echoed = [(await _next(created)).content for _ in range(4)]  # each created message once
        assert echoed == ["part two", "the answer", "unenforced", "much later"]
    posts = [c for c in fake_discord.requests if c.method == "POST" and c.path.endswith("/messages")]
    assert posts[1].body["nonce"] == "qvl42.0" and posts[1].body["enforce_nonce"] is True
    assert [m.content for m in fake_discord.sent] == [
        "the answer", "part two", "the answer", "unenforced", "much later"]
    assert [p["content"] for e, p in fake_discord.dispatched if e == "MESSAGE_CREATE"] == [
        m.content for m in fake_discord.sent]


@pytest.mark.asyncio
async def test_attachment_bytes_and_image_size(fake_discord: FakeDiscord):
    w = fake_discord.world
    bot = QuickBot()
    seen = _queue_of(bot)
    png = _png(8, 5)
    async with running(bot):
        await fake_discord.user_message(
            w.general,
            w.alice,
            "look",
            attachments=[("cat.png", png, "image/png"), ("a.txt", b"hi")],
        )
        message = await _next(seen)
        image, text = message.attachments
        assert (image.filename, image.width, image.height, image.size) == (
            "cat.png",
            8,
            5,
            len(png),
        )
        assert image.content_type == "image/png" and text.content_type == "text/plain"
        assert await image.read() == png and await text.read() == b"hi"
        assert image.url.startswith(fake_discord.base_url)


@pytest.mark.asyncio
async def test_dm_arrives_on_a_dm_channel_and_replies_there(fake_discord: FakeDiscord):
    w = fake_discord.world
    bot = QuickBot()
    seen = _queue_of(bot)
    async with running(bot):
        dm = fake_discord.dm_channel(w.alice)
        await fake_discord.user_message(dm, w.alice, "hello in private")
        message = await _next(seen)
        assert isinstance(message.channel, discord.DMChannel) and message.guild is None
        assert message.content == "hello in private"
        await message.channel.send("hi alice")
        [reply] = await fake_discord.wait_for_sent(channel_id=dm)
        assert reply.content == "hi alice"
        opened = await bot.get_user(w.alice).create_dm()
        assert opened.id == dm


@pytest.mark.asyncio
async def test_slash_commands_sync_respond_defer_and_follow_up(fake_discord: FakeDiscord):
    w = fake_discord.world
    guild = discord.Object(w.guild)
    bot = QuickBot()
    got: asyncio.Queue = asyncio.Queue()

    @bot.tree.command(name="ask", description="Ask a question", guild=guild)
    async def ask(interaction: discord.Interaction, prompt: str, turns: int = 1):
        await got.put((prompt, turns, interaction.user.id, interaction.permissions.administrator))
        await interaction.response.send_message(f"echo {prompt}")

    @bot.tree.command(name="draw", description="Draw boxes on an image", guild=guild)
    async def draw(interaction: discord.Interaction, image: discord.Attachment):
        thinking = await interaction.response.defer(thinking=True)
        data = await image.read()
        await interaction.followup.send(
            "drawn", file=discord.File(io.BytesIO(data[::-1]), "out.png")
        )
        await interaction.followup.send("and one more")
        await interaction.edit_original_response(content="drawn (edited)")
        original = await interaction.original_response()
        await got.put((thinking.message_id, original.content, original.attachments[0].filename))

    async with running(bot):
        synced = await bot.tree.sync(guild=guild)
        assert sorted(c.name for c in synced) == ["ask", "draw"]
        assert fake_discord.command_syncs == [(w.guild, ["ask", "draw"])]
        assert await bot.tree.fetch_commands(guild=guild) == synced

        interaction = await fake_discord.slash(
            w.guild, w.general, w.alice, "ask", {"prompt": "hi", "turns": 2}
        )
        assert await _next(got) == ("hi", 2, w.alice, True)
        [answer] = await fake_discord.wait_for_sent()
        assert (answer.content, answer.via, answer.interaction_id) == (
            "echo hi",
            "interaction",
            int(interaction["id"]),
        )

        image = ("in.png", b"\x01\x02", "image/png")
        await fake_discord.slash(w.guild, w.random, w.bob, "draw", attachments={"image": image})
        thinking_id, original_content, original_file = await _next(got)
        _, drawn, more = await fake_discord.wait_for_sent(3)
    assert [r.type for r in fake_discord.interaction_responses] == [4, 5]
    assert (drawn.content, drawn.via, drawn.files) == (
        "drawn",
        "followup",
        [("out.png", b"\x02\x01")],
    )
    # The first follow-up after a deferral fills the "thinking…" message itself.
    assert drawn.id == thinking_id and not drawn.flags & 128
    assert more.id != drawn.id and (more.content, more.channel_id) == ("and one more", w.random)
    assert (original_content, original_file) == ("drawn (edited)", "out.png")
    assert [(e.message_id, e.via) for e in fake_discord.edits] == [(thinking_id, "interaction")]


@pytest.mark.asyncio
async def test_interaction_rules_are_enforced(fake_discord: FakeDiscord):
    w = fake_discord.world
    bot = QuickBot()
    errors: asyncio.Queue = asyncio.Queue()

    @bot.tree.command(name="slow", description="Answers after the deadline")
    async def slow(interaction: discord.Interaction):
        # Kept on purpose: slow work past the deadline (0.2 s, set below) is the behaviour
        # under test. A sleep never ends early, so this cannot answer in time by chance.
        await asyncio.sleep(0.3)
        try:
            await interaction.response.send_message("late")
        except discord.NotFound as exc:
            await errors.put(exc)

    @bot.tree.command(name="twice", description="Answers twice")
    async def twice(interaction: discord.Interaction):
        try:  # Discord: no follow-up before the first response
            await interaction.followup.send("too early")
        except discord.NotFound as exc:
            await errors.put(exc)
        await interaction.response.send_message("one")
        try:
            await interaction.response.send_message("two")
        except discord.InteractionResponded as exc:
            await errors.put(exc)
        try:
            await bot.http.request(discord.http.Route("GET", "/no/such/route"))
        except discord.NotFound as exc:
            await errors.put(exc)

    async with running(bot):
        await bot.tree.sync()
        with pytest.raises(LookupError):
            await fake_discord.slash(w.guild, w.general, w.alice, "missing")
        await fake_discord.slash(w.guild, w.general, w.alice, "twice")
        assert (await _next(errors)).code == 10015  # Unknown Webhook
        assert isinstance(await _next(errors), discord.InteractionResponded)
        assert (await _next(errors)).text == "404: Not Found"
        with pytest.raises(discord.HTTPException, match="2000 or fewer"):
            await bot.get_channel(w.general).send("x" * 2001)
        fake_discord.interaction_deadline = 0.2
        await fake_discord.slash(w.guild, w.general, w.bob, "slow")
        assert (await _next(errors)).code == 10062  # Unknown interaction: defer slow work
    assert fake_discord.unknown_routes == [("GET", "/no/such/route")]
    assert [m.content for m in fake_discord.sent] == ["one"]


@pytest.mark.asyncio
async def test_reconnect_resumes_and_replays_missed_events(fake_discord: FakeDiscord):
    w = fake_discord.world
    bot = QuickBot()
    seen = _queue_of(bot)
    resumed = _queue_of(bot, "on_resumed")
    async with running(bot):
        await fake_discord.drop_gateway()
        await fake_discord.user_message(w.general, w.alice, "sent while you were away")
        await _next(resumed)
        assert (await _next(seen)).content == "sent while you were away"
        await fake_discord.user_message(w.general, w.bob, "and after")
        assert (await _next(seen)).content == "and after"
    assert (fake_discord.identify_count, fake_discord.resume_count) == (1, 1)
    assert fake_discord.gateway_connections[-1][0] == "/gateway/resume"


@pytest.mark.asyncio
async def test_invalid_session_makes_the_client_identify_again(fake_discord: FakeDiscord):
    w = fake_discord.world
    bot = QuickBot()
    seen = _queue_of(bot)
    ready = _queue_of(bot, "on_ready")
    async with running(bot):
        await _next(ready)
        await fake_discord.drop_gateway(resumable=False)
        await _next(ready)  # a fresh READY after INVALID_SESSION and IDENTIFY
        await fake_discord.user_message(w.general, w.alice, "still there?")
        assert (await _next(seen)).content == "still there?"
    # Connections: identify, failed resume, identify again (discord.py keeps the resume URL).
    assert (fake_discord.identify_count, len(fake_discord.gateway_connections)) == (2, 3)
    assert fake_discord.resume_count == 0


@pytest.mark.asyncio
async def test_redelivered_message_create_reaches_on_message_twice(fake_discord: FakeDiscord):
    w = fake_discord.world
    bot = QuickBot()
    seen = _queue_of(bot)
    async with running(bot):
        payload = await fake_discord.user_message(w.general, w.alice, "once")
        await fake_discord.dispatch("MESSAGE_CREATE", payload)
        first, second = await _next(seen), await _next(seen)
    assert first.id == second.id == int(payload["id"])
    assert fake_discord.last_dispatched == ("MESSAGE_CREATE", payload)


@pytest.mark.asyncio
async def test_without_message_content_intent_only_mentions_carry_content(
    fake_discord: FakeDiscord,
):
    w = fake_discord.world
    bot = QuickBot(intents=_intents(message_content=False))
    seen = _queue_of(bot)
    async with running(bot):
        await fake_discord.user_message(w.general, w.alice, "plain", attachments=[("a.txt", b"x")])
        plain = await _next(seen)
        assert plain.content == "" and plain.attachments == []
        await fake_discord.user_message(w.general, w.alice, f"<@{fake_discord.bot_id}> hey")
        assert (await _next(seen)).content.endswith("hey")
        dm = fake_discord.dm_channel(w.bob)
        await fake_discord.user_message(dm, w.bob, "dm content stays")
        assert (await _next(seen)).content == "dm content stays"


@pytest.mark.asyncio
async def test_threads_from_users_and_from_the_bot(fake_discord: FakeDiscord):
    w = fake_discord.world
    bot = QuickBot()
    seen = _queue_of(bot)
    created = _queue_of(bot, "on_thread_create")
    async with running(bot):
        thread_id = fake_discord.add_thread(w.general, "questions", w.alice)
        assert (await _next(created)).id == thread_id
        await fake_discord.user_message(thread_id, w.alice, "in a thread", reply_to=None)
        message = await _next(seen)
        assert (
            isinstance(message.channel, discord.Thread) and message.channel.parent_id == w.general
        )

        starter = await fake_discord.user_message(w.general, w.bob, "start one here")
        started = await (await _next(seen)).create_thread(name="bob's thread")
        assert started.id == int(starter["id"]) and (await _next(created)).id == started.id
        await started.send("inside")
        [inside] = await fake_discord.wait_for_sent(channel_id=started.id)
        assert inside.content == "inside"


@pytest.mark.asyncio
async def test_history_and_user_side_events(fake_discord: FakeDiscord):
    w = fake_discord.world
    bot = QuickBot()
    edited, deleted = _queue_of(bot, "on_message_edit"), _queue_of(bot, "on_message_delete")
    typing = _queue_of(bot, "on_typing")
    seen = _queue_of(bot)
    async with running(bot):
        ids = [
            int((await fake_discord.user_message(w.random, w.bob, f"m{i}"))["id"]) for i in range(3)
        ]
        for _ in ids:
            await _next(seen)
        channel = bot.get_channel(w.random)
        assert [m.id async for m in channel.history(limit=2)] == ids[:0:-1]
        assert [m.content async for m in channel.history(after=discord.Object(ids[0]))] == [
            "m1",
            "m2",
        ]
        await fake_discord.user_edit(ids[0], "m0 fixed")
        before, after = await _next(edited)
        assert (before.content, after.content) == ("m0", "m0 fixed")
        await fake_discord.user_delete(ids[1])
        assert (await _next(deleted)).id == ids[1]
        await fake_discord.user_typing(w.random, w.alice)
        channel_, user, _when = await _next(typing)
        assert (channel_.id, user.id) == (w.random, w.alice)
        reply = await fake_discord.user_message(w.random, w.alice, "re", reply_to=ids[2])
        message = await _next(seen)
        assert message.reference.message_id == ids[2] and message.reference.resolved.content == "m2"
        assert [u.id for u in message.mentions] == [w.bob] and reply["type"] == 19


@pytest.mark.asyncio
async def test_slash_options_subcommands_and_dm(fake_discord: FakeDiscord):
    w = fake_discord.world
    bot = QuickBot()
    got: asyncio.Queue = asyncio.Queue()
    box = discord.app_commands.Group(name="box", description="Box tools")

    @box.command(name="count", description="Count boxes")
    async def count(interaction: discord.Interaction, member: discord.Member, role: discord.Role):
        await got.put((member.id, role.id, interaction.guild_id))
        await interaction.response.send_message("counted", ephemeral=True)

    @bot.tree.command(name="ping", description="Ping")
    async def ping(interaction: discord.Interaction, loud: bool = False, ratio: float = 0.5):
        await got.put((interaction.guild, type(interaction.channel), loud, ratio))
        await interaction.response.send_message("pong")

    bot.tree.add_command(box)
    async with running(bot):
        await bot.tree.sync()
        options = {"member": w.bob, "role": w.admin_role}
        await fake_discord.slash(w.guild, w.general, w.alice, "box count", options)
        assert await _next(got) == (w.bob, w.admin_role, w.guild)
        [counted] = await fake_discord.wait_for_sent()
        assert counted.ephemeral and counted.content == "counted"

        dm = fake_discord.dm_channel(w.bob)
        await fake_discord.slash(None, dm, w.bob, "ping", {"loud": True, "ratio": 2})
        assert await _next(got) == (None, discord.DMChannel, True, 2.0)
        _, pong = await fake_discord.wait_for_sent(2)
        assert (pong.channel_id, pong.content) == (dm, "pong")
        # Ephemeral answers never reach the channel; normal ones are echoed as MESSAGE_CREATE.
        echoed = [p["content"] for e, p in fake_discord.dispatched if e == "MESSAGE_CREATE"]
        assert "pong" in echoed and "counted" not in echoed


@pytest.mark.asyncio
async def test_world_changes_while_connected_reach_the_bot(fake_discord: FakeDiscord):
    w = fake_discord.world
    bot = QuickBot()
    joined = _queue_of(bot, "on_guild_join")
    channels = _queue_of(bot, "on_guild_channel_create")
    members = _queue_of(bot, "on_member_join")
    updates = _queue_of(bot, "on_member_update")
    async with running(bot):
        carol = fake_discord.add_user("carol")
        gid = fake_discord.add_guild("second guild", owner_id=carol)
        assert (await _next(joined)).id == gid
        cid = fake_discord.add_text_channel(w.guild, "images")
        assert (await _next(channels)).name == "images"
        fake_discord.add_member(w.guild, carol)
        assert (await _next(members)).id == carol
        fake_discord.give_role(w.guild, carol, w.admin_role)
        _, after = await _next(updates)
        assert after.guild_permissions.administrator
        await fake_discord.user_message(cid, carol, "hi from carol")
        await fake_discord.wait_for(lambda: bot.get_channel(cid).last_message_id, what="last id")


class _QuietCore:
    """What the qvl Discord frontend needs of its core when no one asks anything: a delivery
    loop that waits, and a record of the replies it reports sent."""

    def __init__(self) -> None:
        self.acked: list[tuple[int | None, str]] = []

    async def serve_replies(self, platform, deliver) -> None:
        await asyncio.Event().wait()

    async def sent(self, reply, platform_message_id: str) -> None:
        self.acked.append((reply.job_id, platform_message_id))


@pytest.mark.asyncio
async def test_the_frontend_raises_when_discord_refuses_and_a_retry_posts_each_part_once(
        fake_discord: FakeDiscord, tmp_path):
    """The qvl frontend's ``deliver`` against the fake: a refused part raises (the core offers
    the reply again), and the parts Discord took come back by their nonces, not twice."""
    from bots.discord.bot import DiscordFrontend
    from qvl.protocol import Reply
    from qvl.settings import Settings

    class Frontend(DiscordFrontend):
        async def before_identify_hook(self, shard_id, *, initial=False):
            return None

    w = fake_discord.world
    core = _QuietCore()
    bot = Frontend(Settings(data_dir=tmp_path), core, guild_ready_timeout=0.1)
    posts = rf"/channels/{w.general}/messages"
    async with running(bot):
        question = await fake_discord.user_message(w.general, w.alice, "tell me everything")
        reply = Reply(platform="discord", chat_id=str(w.general), text="a " * 1000 + "the end", job_id=7,
                      reply_to_message_id=question["id"], user_id=str(w.alice))
        fake_discord.refuse("POST", posts, when=lambda body: body.get("nonce") == "qvl7.1")
        with pytest.raises(discord.Forbidden):
            await bot.deliver(reply)  # the first part is posted, the second refused
        assert core.acked == [] and [m.content[:4] for m in fake_discord.sent] == ["a a "]
        await bot.deliver(reply)  # offered again: the first part is not posted twice
        first, second = fake_discord.sent
        assert first.reply_to == int(question["id"]) and second.content.endswith("the end")
        assert core.acked == [(7, str(first.id))]
        # A command's immediate reply (message=) is only logged when Discord refuses it.
        asked = await bot.get_channel(w.general).fetch_message(int(question["id"]))
        fake_discord.refuse("POST", posts)
        await bot.deliver(Reply(platform="discord", chat_id=str(w.general), text="help"), message=asked)
    nonces = [c.body.get("nonce") for c in fake_discord.requests if c.method == "POST" and c.path == posts]
    assert nonces[:4] == ["qvl7.0", "qvl7.1", "qvl7.0", "qvl7.1"]
    assert not nonces[4].startswith("qvl")  # discord.py's own: a random one per call
    assert len(fake_discord.sent) == 2
