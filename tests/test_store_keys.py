"""Key layout and token rules: one hash slot per user, hostile user ids,
no token in the clear, tokens that say nothing about their user."""

from __future__ import annotations

import base64
import hashlib

import pytest
from redis.crc import key_slot

from sessionkit import SessionStore
from sessionkit import _keys as keys
from sessionkit._keys import new_token, session_id, token_bucket, user_digest
from tests.conftest import Backend

HOSTILE_IDS = [
    "x",
    "{x}",
    "}x{",
    "{",
    "}",
    "{}",
    "a:b",
    ":",
    "u:s:",
    " ",
    "with spaces and\ttabs\nnewlines",
    "日本語のユーザー",
    "emoji 🎉",
    "\x00nul",
    "*",
    "?[a]",
    "é" * 512,  # 1 KiB of UTF-8
    "{" + "a" * 1022 + "}",
]


async def test_hostile_user_ids_stay_apart(
    store: SessionStore, backend: Backend, prefix: str
) -> None:
    tokens = {}
    for i, uid in enumerate(HOSTILE_IDS):
        s = await store.create(uid, [f"g{i}"])
        tokens[uid] = s.token
    for i, uid in enumerate(HOSTILE_IDS):
        listed = await store.list(uid)
        assert [s.access_groups for s in listed] == [[f"g{i}"]], uid
        assert listed[0].user_id == uid
        assert await store.add_groups(uid, "more") == 1
        token = tokens[uid]
        assert token is not None
        got = await store.get(uid, token)
        assert got is not None and got.access_groups == sorted([f"g{i}", "more"])
        resolved = await store.resolve(token)
        assert resolved is not None and resolved.user_id == uid
        for other in HOSTILE_IDS:
            if other != uid:
                assert await store.get(other, token) is None
    # Each user's delete_all removes exactly that user's one session.
    for uid in HOSTILE_IDS:
        assert await store.delete_all(uid) == 1
    assert await backend.keys(prefix) == []


async def test_every_key_of_a_user_shares_one_hash_slot(
    store: SessionStore, backend: Backend, prefix: str
) -> None:
    for uid in ["x", "{x}", "é" * 512]:
        for _ in range(3):
            await store.create(uid)
        digest, _ = user_digest(uid)
        user_keys = [k for k in await backend.keys(prefix)]
        index = [k for k in user_keys if k.endswith(f":u:{digest}")]
        assert len(index) == 1
        tag = index[0].split(":")[1]
        mine = [k for k in user_keys if k.split(":")[1] == tag]
        assert len(mine) >= 4
        slots = {key_slot(k.encode()) for k in mine}
        assert len(slots) == 1


async def test_keys_stay_under_the_prefix_and_hold_no_user_id(
    store: SessionStore, backend: Backend, prefix: str
) -> None:
    for uid in HOSTILE_IDS:
        await store.create(uid)
    every = await backend.keys(prefix)
    assert len(every) == 4 * len(HOSTILE_IDS)  # a session, an index, an order, groups
    for key in every:
        assert key.startswith(f"{prefix}:{{")
        rest = key[len(prefix) + 1 :]
        assert rest.count("{") == 1 and rest.count("}") == 1
    assert not any("日本" in k or "x}" in k or "a:b" in k for k in every)


async def test_no_token_is_stored_in_the_clear(
    store: SessionStore, backend: Backend, prefix: str
) -> None:
    sessions = [await store.create(f"user{i % 3}", ["g"], data={"k": "v"}) for i in range(9)]
    await store.add_groups("user0", "h")
    assert sessions[1].token is not None
    await store.delete("user1", sessions[1].token)
    await store.delete_all("user2")
    dump = await backend.dump(prefix)
    assert any(k.endswith(":events") for k in dump)  # the events are in the dump too
    blob = repr(dump).encode()
    for s in sessions:
        assert s.token is not None
        raw = base64.urlsafe_b64decode(s.token + "==")
        assert s.token.encode() not in blob
        assert raw[2:] not in b"".join(
            v if isinstance(v, bytes) else repr(v).encode() for v in dump.values()
        )
        assert s.token[10:30].encode() not in blob


async def test_tokens_are_random_and_reveal_nothing_readable(store: SessionStore) -> None:
    uid = "alice@example.com"
    tokens = [(await store.create(uid)).token for _ in range(20)]
    assert len(set(tokens)) == 20
    for t in tokens:
        assert t is not None
        raw = base64.urlsafe_b64decode(t + "==")
        assert len(raw) - 2 >= 32  # 256 random bits after the two-byte bucket
        assert uid.encode() not in raw and "alice" not in t
        assert set(t) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    # Apart from the bucket, no two tokens of one user share a prefix.
    assert len({t[3:8] for t in tokens if t}) == 20


def test_a_user_s_keys_are_named_the_same_one_at_a_time_and_all_at_once() -> None:
    """The calls build a user's three keys at once from the bucket's
    prefix (`user_keys`); the rest of the code names them one at a time."""
    digest, bucket = user_digest("alice")
    assert keys.user_keys(keys.user_prefix("sk", bucket), digest) == (
        keys.index_key("sk", bucket, digest),
        keys.order_key("sk", bucket, digest),
        keys.groups_key("sk", bucket, digest),
    )


def test_a_session_id_is_the_bucket_and_a_digest_of_the_token() -> None:
    token = new_token(700)
    digest = hashlib.blake2b(token.encode(), digest_size=16, person=b"sessionkit-token").digest()
    expected = base64.urlsafe_b64encode((700).to_bytes(2, "big") + digest).decode()
    assert session_id(token) == expected.rstrip("=")
    assert token_bucket(token) == 700


@pytest.mark.parametrize("bad", ["+", "/", "=", " ", "\n", "é", "\u0663", "\uff21", "\x00"])
async def test_a_token_with_any_character_outside_base64url_is_nobody_s(
    store: SessionStore, bad: str
) -> None:
    made = await store.create("alice")
    assert made.token is not None
    for at in (0, 20, len(made.token) - 1):  # same length, one character off
        forged = made.token[:at] + bad + made.token[at + 1 :]
        assert token_bucket(forged) is None
        assert await store.resolve(forged) is None
        assert await store.get("alice", forged) is None
    assert token_bucket(made.token + "\n") is None  # a trailing newline is no end
    assert await store.resolve(made.token) is not None


async def test_tokens_from_another_prefix_never_resolve(backend: Backend, prefix: str) -> None:
    app_a = SessionStore(backend.client, prefix=prefix + "a")
    app_b = SessionStore(backend.client, prefix=prefix + "b")
    s = await app_a.create("alice")
    assert s.token
    assert await app_b.resolve(s.token) is None
    assert await app_b.get("alice", s.token) is None
    assert await app_b.delete("alice", s.token) is False
    assert await app_a.resolve(s.token) is not None


@pytest.mark.parametrize("bad", ["{", "}", "a{b}", "", "x" * 65, "new\nline"])
async def test_prefixes_that_would_break_the_layout_are_refused(backend: Backend, bad: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        SessionStore(backend.client, prefix=bad)


def _two_users_in_one_bucket() -> tuple[str, str]:
    seen: dict[int, str] = {}
    for i in range(100_000):
        uid = f"neighbour-{i}"
        _, bucket = user_digest(uid)
        if bucket in seen:
            return seen[bucket], uid
        seen[bucket] = uid
    raise AssertionError("no two users share a bucket")


async def test_users_sharing_a_hash_tag_still_cannot_reach_each_other(
    store: SessionStore,
) -> None:
    a, b = _two_users_in_one_bucket()
    sa = await store.create(a, "a-group")
    sb = await store.create(b, "b-group")
    assert sa.id[:2] == sb.id[:2]  # same bucket, same slot
    assert await store.get(b, sa.token or "") is None
    assert await store.delete(b, sa.token or "") is False
    assert await store.delete_by_id(b, sa.id) is False
    assert await store.add_groups(b, "more") == 1
    assert [s.id for s in await store.list(a)] == [sa.id]
    got = await store.get(a, sa.token or "")
    assert got is not None and got.access_groups == ["a-group"]
    assert await store.delete_all(b) == 1
    assert await store.resolve(sa.token or "") is not None
