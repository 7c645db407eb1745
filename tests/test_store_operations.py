"""The store's operations, as the contract states them, on every backend."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

import sessionkit.store as store_module
from sessionkit import Session, SessionStore, ValidationError
from sessionkit import _keys as keys
from tests.conftest import Backend, StoreFactory

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)


class StoreContract:
    """What every session store here must do: sessionkit's `SessionStore` on
    every backend (`TestSessionStore` below) and the benchmark's naive
    yardstick (`tests/test_bench.py`), so that their numbers compare like
    with like. A subclass named ``Test...`` runs it with its own `store`."""

    async def test_create_returns_a_full_session_with_its_token(self, store: SessionStore) -> None:
        before = datetime.now(UTC)
        s = await store.create("alice", ["b", "a", "b"], user_agent=FIREFOX, data={"n": 1})
        assert s.user_id == "alice"
        assert s.token is not None and len(s.token) >= 43
        assert s.access_groups == ["a", "b"]
        assert s.data == {"n": 1}
        assert abs(s.created_at - before) < timedelta(seconds=5)
        assert s.created_at.tzinfo is not None
        assert abs(s.last_active_at - s.created_at) < timedelta(milliseconds=1)
        assert abs(s.expires_at - s.created_at - timedelta(days=14)) < timedelta(milliseconds=1)
        assert s.user_agent is not None
        assert s.user_agent.family == "Firefox" and s.user_agent.major == "120"
        assert s.user_agent.os.family == "Linux"
        assert s.user_agent.device.family == "Other" and s.user_agent.device.major == "0"

    async def test_create_accepts_one_group_as_text(self, store: SessionStore) -> None:
        s = await store.create("alice", "admin")
        assert s.access_groups == ["admin"]

    async def test_get_returns_the_session_only_for_its_own_user(self, store: SessionStore) -> None:
        a = await store.create("alice", ["a"])
        b = await store.create("bob")
        assert a.token and b.token
        got = await store.get("alice", a.token)
        assert got is not None and got.id == a.id and got.token == a.token
        assert got.access_groups == ["a"]
        assert await store.get("alice", b.token) is None
        assert await store.get("bob", a.token) is None

    async def test_resolve_finds_the_session_from_the_token_alone(
        self, store: SessionStore
    ) -> None:
        s = await store.create("carol", ["x"], data={"k": [1, 2]})
        assert s.token
        got = await store.resolve(s.token)
        assert got is not None
        assert (got.id, got.user_id, got.access_groups) == (s.id, "carol", ["x"])
        assert got.data == {"k": [1, 2]}

    async def test_list_returns_live_sessions_oldest_first_without_tokens(
        self,
        store: SessionStore,
    ) -> None:
        made = [await store.create("dave", [str(i)]) for i in range(5)]
        await store.create("erin")
        listed = await store.list("dave")
        assert [s.id for s in listed] == [s.id for s in made]
        assert all(s.token is None for s in listed)
        assert [s.access_groups for s in listed] == [[str(i)] for i in range(5)]
        assert await store.list("nobody") == []

    async def test_delete_removes_one_session(self, store: SessionStore) -> None:
        a = await store.create("alice")
        b = await store.create("alice")
        assert a.token and b.token
        assert await store.delete("bob", a.token) is False
        assert await store.delete("alice", a.token) is True
        assert await store.delete("alice", a.token) is False
        assert await store.get("alice", a.token) is None
        assert [s.id for s in await store.list("alice")] == [b.id]

    async def test_group_changes_touch_every_session_and_count_changes(
        self, store: SessionStore
    ) -> None:
        s1 = await store.create("alice", ["a"])
        s2 = await store.create("alice", [])
        other = await store.create("bob", [])
        assert await store.add_groups("alice", "a") == 1  # s1 had it already
        assert await store.add_groups("alice", ["a", "b"]) == 2
        assert await store.add_groups("alice", ("a", "b")) == 0
        for s in (s1, s2):
            got = await store.get("alice", s.token or "")
            assert got is not None and got.access_groups == ["a", "b"]
        assert await store.remove_groups("alice", ["a", "zzz"]) == 2
        assert await store.remove_groups("alice", "a") == 0
        assert [s.access_groups for s in await store.list("alice")] == [["b"], ["b"]]
        got_other = await store.get("bob", other.token or "")
        assert got_other is not None and got_other.access_groups == []
        assert await store.add_groups("nobody", "a") == 0
        assert await store.remove_groups("nobody", "a") == 0
        assert await store.add_groups("alice", []) == 0

    async def test_data_round_trips_exactly(self, store: SessionStore) -> None:
        data = {
            "big": 2**62,
            "float": 0.1 + 0.2,
            "empty_list": [],
            "empty_map": {},
            "nested": {"a": [1, "two", None, True]},
            "text": "naïve ☃ \u0000 {x}",
        }
        s = await store.create("alice", data=data)
        got = await store.get("alice", s.token or "")
        assert got is not None and got.data == data
        resolved = await store.resolve(s.token or "")
        assert resolved is not None and resolved.data == data
        await store.add_groups("alice", "g")
        after = await store.list("alice")
        assert after[0].data == data


class TestSessionStore(StoreContract):
    """The contract, on sessionkit's store (every backend)."""


async def test_json_uses_the_platform_field_names(store: SessionStore) -> None:
    s = await store.create("alice", ["a"], user_agent=IPHONE)
    doc = msgspec.json.decode(msgspec.json.encode(s))
    assert doc["userId"] == "alice"
    assert doc["token"] == s.token
    assert doc["accessGroupKeys"] == ["a"]
    assert doc["creationDtm"].endswith("Z")
    assert datetime.fromisoformat(doc["creationDtm"]) == s.created_at
    assert set(doc) >= {"id", "expiresAt", "lastActiveAt", "data", "userAgent"}
    ua = doc["userAgent"]
    assert ua["family"] == "Mobile Safari"
    assert ua["device"]["family"] == "iPhone"
    assert ua["os"]["family"] == "iOS"
    # Exactly the platform's fields, versions as text ("0" when unknown).
    assert set(ua) == {"family", "major", "minor", "patch", "device", "os"}
    assert set(ua["device"]) == set(ua["os"]) == {"family", "major", "minor", "patch"}
    assert ua["device"]["major"] == "0" and all(isinstance(ua[v], str) for v in ("major", "patch"))
    assert s.to_dict() == doc


async def test_unknown_and_malformed_tokens_are_not_errors(store: SessionStore) -> None:
    s = await store.create("alice")
    assert s.token
    forged = s.token[:-2] + ("AA" if s.token[-2:] != "AA" else "BA")
    for bad in [forged, "", "x", "A" * 46, s.token + "A", "é" * 46, " " * 46]:
        assert await store.get("alice", bad) is None
        assert await store.resolve(bad) is None
        assert await store.delete("alice", bad) is False
    for not_text in [None, 42, b"bytes", ["a", "list"], {"a": "dict"}]:
        assert await store.resolve(not_text) is None  # type: ignore[arg-type]
        assert await store.get("alice", not_text) is None  # type: ignore[arg-type]
    assert await store.resolve(s.token) is not None


async def test_a_token_read_again_reads_what_the_server_holds_now(store: SessionStore) -> None:
    # The store keeps what a token derives (its session's id and key), never
    # what a read returned: every read asks the server.
    s = await store.create("alice", ["member"])
    token = s.token or ""
    first = await store.resolve(token)
    assert first is not None and first.access_groups == ["member"]
    assert await store.add_groups("alice", ["admin"]) == 1
    again = await store.resolve(token)
    assert again is not None and again.access_groups == ["admin", "member"]
    mine = await store.get("alice", token)
    assert mine is not None and mine.id == s.id
    assert await store.get("bob", token) is None
    assert await store.delete("alice", token) is True
    assert await store.resolve(token) is None
    assert await store.get("alice", token) is None


async def test_groups_read_back_sorted_and_each_read_gets_its_own_list(
    store: SessionStore,
) -> None:
    few = ["member", "admin"]
    many = [f"group-{i:03d}-" + "x" * 20 for i in range(40)]  # an entry of about 1,200 bytes
    for groups in (few, many):
        s = await store.create("alice", groups)
        assert s.token
        for _ in range(2):  # the second read decodes nothing the first did not
            got = await store.resolve(s.token)
            assert got is not None and got.access_groups == sorted(groups)
            got.access_groups.append("mine")  # the caller's to change
        listed = [x for x in await store.list("alice") if x.id == s.id]
        assert listed[0].access_groups == sorted(groups)


async def test_a_store_keeps_a_bounded_number_of_tokens_and_only_tokens(
    make_store: StoreFactory,
) -> None:
    assert make_store().token_cache == store_module.TOKENS_CACHED
    store = make_store(token_cache=4)
    kept = store._token_reads.cache_info
    tokens = [(await store.create(f"user-{i}")).token or "" for i in range(6)]
    for token in tokens:
        assert await store.resolve(token) is not None
    assert kept().currsize == 4
    # Input that is not a token is answered without taking a place: a long
    # string is not held, an unhashable one does not raise.
    before = kept()
    for bad in ["A" * 1_000_000, tokens[0] + "A", ["not", "hashable"], b"x" * 46]:
        assert await store.resolve(bad) is None  # type: ignore[arg-type]
    assert kept() == before
    # The most recently used stay: read again, they cost no derivation.
    for token in tokens[2:]:
        assert await store.resolve(token) is not None
    assert kept().hits == before.hits + 4
    await store.aclose()
    assert kept().currsize == 0  # closed: no token is held any more


async def test_a_store_can_keep_no_tokens(make_store: StoreFactory) -> None:
    store = make_store(token_cache=0)
    s = await store.create("alice", ["member"])
    for _ in range(2):
        got = await store.resolve(s.token or "")
        assert got is not None and got.id == s.id
        assert await store.get("alice", s.token or "") is not None
    assert store._token_reads.cache_info().currsize == 0


@pytest.mark.parametrize("bad", [-1, 1_000_001, True, 2.5, "16384", None])
def test_a_token_cache_size_out_of_range_is_refused(make_store: StoreFactory, bad: object) -> None:
    with pytest.raises(ValidationError, match="token_cache must be an int from 0 to 1,000,000"):
        make_store(token_cache=bad)


async def test_delete_by_id_removes_only_the_users_own_session(store: SessionStore) -> None:
    a = await store.create("alice")
    b = await store.create("bob")
    assert await store.delete_by_id("alice", b.id) is False
    assert await store.resolve(b.token or "") is not None
    assert await store.delete_by_id("alice", "not-an-id") is False
    assert await store.delete_by_id("alice", a.id) is True
    assert await store.list("alice") == []


async def test_delete_all_and_sign_out_everywhere_else(
    store: SessionStore, backend: Backend, prefix: str
) -> None:
    keep, *_ = [await store.create("alice") for _ in range(4)]
    bob = await store.create("bob")
    assert await store.delete_all("alice", except_token=keep.token) == 3
    assert [s.id for s in await store.list("alice")] == [keep.id]
    assert await store.resolve(bob.token or "") is not None
    assert await store.delete_all("alice") == 1
    assert await store.delete_all("alice") == 0
    assert await store.list("alice") == []
    remaining = await backend.keys(prefix)
    assert len(remaining) == 4  # bob's session, index, order and groups only


async def test_group_keys_of_any_text_survive(store: SessionStore) -> None:
    odd = ["a:b", "1:x", "12:", "{g}", "with space", "日本", "0", "::::"]
    s = await store.create("alice", odd)
    assert s.access_groups == sorted(odd)
    assert await store.remove_groups("alice", "12:") == 1
    got = await store.get("alice", s.token or "")
    assert got is not None and got.access_groups == sorted(set(odd) - {"12:"})


async def test_max_sessions_per_user_evicts_the_oldest(make_store: StoreFactory) -> None:
    store = make_store(max_sessions_per_user=2)
    a = await store.create("alice")
    b = await store.create("alice")
    c = await store.create("alice")
    assert [s.id for s in await store.list("alice")] == [b.id, c.id]
    assert await store.resolve(a.token or "") is None
    other = make_store(max_sessions_per_user=2)
    await other.create("bob")
    assert len(await other.list("alice")) == 2


async def test_a_session_s_times_are_one_reading_of_the_server_clock(store: SessionStore) -> None:
    """Creation time to the microsecond, expiry and last-active to the
    millisecond, all from one reading: last-active is creation time cut to
    its millisecond, whatever the clock's microseconds. Creates until some
    fall in the first 100 ms of a second (the server's microseconds then
    have fewer than six digits), for at most three seconds."""
    short = 0
    deadline = time.monotonic() + 3
    while short < 3:
        assert time.monotonic() < deadline, "no session made in the first 100 ms of a second"
        s = await store.create("alice")
        ms = s.created_at.replace(microsecond=s.created_at.microsecond // 1000 * 1000)
        assert s.last_active_at == ms
        assert s.expires_at == ms + timedelta(days=14)
        got = await store.resolve(s.token or "")
        assert got is not None and got.created_at == s.created_at
        short += s.created_at.microsecond < 100_000


async def test_lifetime_option_accepts_timedelta(make_store: StoreFactory) -> None:
    store = make_store(lifetime=timedelta(hours=1))
    s = await store.create("alice")
    assert abs(s.expires_at - s.created_at - timedelta(hours=1)) < timedelta(milliseconds=1)


async def test_a_retried_create_with_the_same_token_makes_one_session(
    store: SessionStore,
) -> None:
    from sessionkit import _keys as keys
    from sessionkit._model import encode_body

    digest, bucket = keys.user_digest("alice")
    token = keys.new_token(bucket)
    body = encode_body("alice", None, {})
    first = await store._create("alice", digest, bucket, token, body, ("a",))
    again = await store._create("alice", digest, bucket, token, body, ("a",))
    assert again.id == first.id and again.created_at == first.created_at
    assert len(await store.list("alice")) == 1


async def test_session_is_a_msgspec_struct() -> None:
    assert issubclass(Session, msgspec.Struct)


async def test_repr_and_str_of_a_session_never_show_its_token(store: SessionStore) -> None:
    s = await store.create("tess", "g")
    assert s.token is not None
    for shown in (repr(s), str(s), f"{s}", f"{[s]}"):
        assert s.token not in shown and f"token='{s.token[:6]}…'" in shown
    assert "user_id='tess'" in repr(s)
    assert msgspec.json.decode(msgspec.json.encode(s))["token"] == s.token  # JSON keeps it
    assert s.to_dict()["token"] == s.token


async def test_revoke_tells_deleted_from_unknown_from_another_users(store: SessionStore) -> None:
    mine = await store.create("alice")
    kept = await store.create("alice")
    theirs = await store.create("bob")
    assert await store.revoke("alice", mine.id) == "deleted"
    assert await store.resolve(mine.token or "") is None
    assert await store.revoke("alice", mine.id) == "none"  # already gone
    assert await store.revoke("alice", kept.token or "") == "deleted"  # by token too
    assert await store.revoke("alice", theirs.id) == "another_user"
    assert await store.revoke("alice", theirs.token or "") == "another_user"
    assert await store.resolve(theirs.token or "") is not None  # untouched
    for unknown in (keys.new_token(5), keys.session_id(keys.new_token(900)), "nope", ""):
        assert await store.revoke("alice", unknown) == "none"
