"""Privacy and access: whose history a message joins, and where the bot answers at all."""

from bots.access import Policy, allowed, is_admin, policy_for
from bots.scope import may_join, scope_key
from qvl.protocol import Scope, Where
from qvl.settings import Settings

DM = Where()
CHANNEL = Where(space_id="g1", channel_id="c1")
THREAD = Where(space_id="g1", channel_id="t9", thread_id="t9", parent_id="c1")


# --- scope_key -------------------------------------------------------------------------


def test_a_direct_chat_is_private_whatever_the_scope():
    for scope in Scope:
        assert scope_key(DM, "alice", scope) == "dm:alice"
    assert scope_key(DM, "alice", Scope.SHARED) != scope_key(CHANNEL, "alice", Scope.SHARED)


def test_per_user_is_the_default_and_keeps_people_apart():
    alice, bob = scope_key(CHANNEL, "alice", Scope.USER), scope_key(CHANNEL, "bob", Scope.USER)
    assert alice != bob
    assert "alice" in alice and "bob" not in alice


def test_shared_is_one_conversation_for_everyone_in_the_channel():
    assert scope_key(CHANNEL, "alice", Scope.SHARED) == scope_key(CHANNEL, "bob", Scope.SHARED)
    other = Where(space_id="g1", channel_id="c2")
    assert scope_key(other, "alice", Scope.SHARED) != scope_key(CHANNEL, "alice", Scope.SHARED)


def test_thread_scope_is_one_per_thread_and_per_user_outside_threads():
    assert scope_key(THREAD, "alice", Scope.THREAD) == scope_key(THREAD, "bob", Scope.THREAD)
    other = Where(space_id="g1", channel_id="t8", thread_id="t8", parent_id="c1")
    assert scope_key(other, "alice", Scope.THREAD) != scope_key(THREAD, "alice", Scope.THREAD)
    assert scope_key(CHANNEL, "alice", Scope.THREAD) == scope_key(CHANNEL, "alice", Scope.USER)
    assert scope_key(CHANNEL, "alice", Scope.THREAD) != scope_key(CHANNEL, "bob", Scope.THREAD)


# --- may_join ------------------------------------------------------------------------


def test_anyone_in_the_space_may_continue_a_shared_conversation():
    assert may_join(scope_key(CHANNEL, "alice", Scope.SHARED), CHANNEL, "bob")
    assert may_join(scope_key(THREAD, "alice", Scope.THREAD), THREAD, "bob")


def test_nobody_joins_someone_elses_per_user_or_direct_conversation():
    mine = scope_key(CHANNEL, "alice", Scope.USER)
    assert may_join(mine, CHANNEL, "alice")
    assert not may_join(mine, CHANNEL, "bob")
    assert not may_join(scope_key(DM, "alice", Scope.USER), DM, "bob")
    assert not may_join(scope_key(DM, "alice", Scope.USER), CHANNEL, "bob")
    assert may_join(scope_key(DM, "alice", Scope.USER), DM, "alice")


def test_no_conversation_of_another_space_can_be_joined():
    shared = scope_key(CHANNEL, "alice", Scope.SHARED)
    assert not may_join(shared, Where(space_id="g2", channel_id="c1"), "bob")
    assert not may_join(shared, DM, "alice")
    # "g1" must not match a space "g12" by prefix
    assert not may_join(scope_key(Where(space_id="g12", channel_id="c"), "a", Scope.SHARED), CHANNEL, "a")


# --- allowed / is_admin ----------------------------------------------------------------


def test_direct_chats_are_always_served():
    strict = Policy(spaces=frozenset({"g9"}), channels=frozenset({"c9"}), roles=frozenset({"r9"}))
    assert allowed(strict, {"channels": ["c9"]}, DM)


def test_operators_space_and_channel_lists():
    assert allowed(Policy(), {}, CHANNEL)
    assert allowed(Policy(spaces=frozenset({"g1"})), {}, CHANNEL)
    assert not allowed(Policy(spaces=frozenset({"g2"})), {}, CHANNEL)
    assert allowed(Policy(channels=frozenset({"c1"})), {}, CHANNEL)
    assert not allowed(Policy(channels=frozenset({"c2"})), {}, CHANNEL)


def test_a_thread_counts_as_its_parent_channel():
    assert allowed(Policy(channels=frozenset({"c1"})), {}, THREAD)
    assert not allowed(Policy(channels=frozenset({"c2"})), {}, THREAD)


def test_the_spaces_own_channel_list():
    assert allowed(Policy(), {"channels": ["c1"]}, CHANNEL)
    assert not allowed(Policy(), {"channels": ["c2"]}, CHANNEL)
    assert allowed(Policy(), {"channels": ["c1"]}, THREAD)


def test_roles_a_member_needs():
    policy = Policy(roles=frozenset({"mod"}))
    assert not allowed(policy, {}, CHANNEL)
    assert allowed(policy, {}, Where(space_id="g1", channel_id="c1", roles=frozenset({"mod", "x"})))


def test_who_may_change_settings():
    listed = Policy(admins=frozenset({"carol"}))
    assert is_admin(Policy(), Where(space_id="g1", channel_id="c1", admin=True), "dave")
    assert is_admin(listed, CHANNEL, "carol")
    assert not is_admin(listed, CHANNEL, "dave")
    assert not is_admin(listed, DM, "carol")  # no space, nothing to administer


# --- policy_for ----------------------------------------------------------------------


def test_discord_policy_from_settings_parses_ids_once():
    s = Settings(discord_allowed_guilds="1, 2,", discord_allowed_channels="3",
                 discord_allowed_roles="", wechat_rooms="r1")
    assert s.discord_allowed_guilds == frozenset({"1", "2"})
    assert s.discord_allowed_roles == frozenset()
    policy = policy_for(s, "discord")
    assert policy.spaces is s.discord_allowed_guilds  # the parsed set itself, not parsed again
    assert policy == Policy(spaces=frozenset({"1", "2"}), channels=frozenset({"3"}))
    assert allowed(policy, {}, Where(space_id="2", channel_id="3"))
    assert not allowed(policy, {}, Where(space_id="4", channel_id="3"))


def test_wechat_policy_from_settings():
    s = Settings(wechat_rooms="room1,room2", wechat_admins="boss", discord_allowed_guilds="1")
    policy = policy_for(s, "wechat")
    assert policy == Policy(spaces=frozenset({"room1", "room2"}), admins=frozenset({"boss"}))
    assert policy.admins is s.wechat_admins
    assert is_admin(policy, Where(space_id="room1", channel_id="room1"), "boss")
    assert policy_for(s, "telegram") == Policy()
