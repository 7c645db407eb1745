"""Session events: every change appends exactly its event, inside the script
that makes it; consumers in a group get every event once and lose none
across restarts. On the real server, the real cluster and fakeredis."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from sessionkit import SessionStore, ValidationError
from sessionkit import _keys as keys
from sessionkit.events import EVENT_TYPES, Event, EventConsumer, tail
from tests.conftest import Backend, StoreFactory, drain, stream_of

Seen = tuple[str, str, tuple[str, ...], tuple[str, ...]]


def seen(events: list[Event]) -> list[Seen]:
    """What each event says (its sessions in a fixed order)."""
    return [(e.type, e.user_id, tuple(sorted(e.session_ids)), e.groups) for e in events]


def consumer(store: SessionStore, name: str = "c1", **options: Any) -> EventConsumer:
    options.setdefault("block", 0.05)
    options.setdefault("group", "g")
    return EventConsumer(store, consumer=name, **options)


async def test_every_change_appends_exactly_its_event(make_store: StoreFactory) -> None:
    store = make_store(max_sessions_per_user=2)
    watch = consumer(store)
    await watch.setup()

    a1 = await store.create("alice", ["reader"])
    a2 = await store.create("alice")
    a3 = await store.create("alice", ["x", "y"])  # evicts a1, the oldest
    assert await store.add_groups("alice", ["admin"]) == 2
    assert await store.add_groups("alice", ["admin"]) == 0  # no change: no event
    assert await store.remove_groups("alice", ["x"]) == 1
    assert await store.remove_groups("alice", ["nope"]) == 0  # no change: no event
    assert a2.token and a3.token and a1.token
    assert await store.delete("alice", a2.token)
    assert not await store.delete("alice", a2.token)  # gone already: no event
    assert not await store.delete("bob", a3.token)  # another user's token: no event
    b1 = await store.create("bob")
    assert await store.delete_all("alice") == 1
    assert await store.delete_all("alice") == 0  # nothing to delete: no event
    # Reads write no events.
    assert b1.token
    await store.get("bob", b1.token)
    await store.resolve(b1.token)
    await store.list("bob")
    with pytest.raises(ValidationError):
        await store.add_groups("alice", [""])  # refused: no event

    events = await drain(watch)
    # One user's events are in order; different users' only as far as server
    # clocks go (on a cluster, different nodes).
    assert seen([e for e in events if e.user_id == "alice"]) == [
        ("created", "alice", (a1.id,), ("reader",)),
        ("created", "alice", (a2.id,), ()),
        ("evicted", "alice", (a1.id,), ()),
        ("created", "alice", (a3.id,), ("x", "y")),
        ("groups_added", "alice", tuple(sorted((a2.id, a3.id))), ("admin",)),
        ("groups_removed", "alice", (a3.id,), ("x",)),
        ("deleted", "alice", (a2.id,), ()),
        ("all_deleted", "alice", (a3.id,), ()),
    ]
    assert seen([e for e in events if e.user_id != "alice"]) == [("created", "bob", (b1.id,), ())]
    assert {e.type for e in events} <= EVENT_TYPES
    now = datetime.now(UTC)
    assert all(now - timedelta(seconds=30) < e.at <= now + timedelta(seconds=1) for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)  # a batch is time-ordered


async def test_events_name_sessions_never_tokens(make_store: StoreFactory) -> None:
    store = make_store()
    watch = consumer(store)
    await watch.setup()
    s = await store.create("carol", ["g"])
    await store.delete_all("carol")
    events = await drain(watch)
    assert len(events) == 2 and s.token
    assert all(s.token not in repr(e) for e in events)
    assert all(e.session_ids == (s.id,) for e in events)


async def test_a_user_s_events_live_in_the_user_s_hash_slot(
    make_store: StoreFactory, backend: Backend, prefix: str
) -> None:
    store = make_store()
    await store.create("dave")
    _, bucket = keys.user_digest("dave")
    streams = await backend.keys(prefix, streams=True)
    assert keys.events_key(prefix, bucket) in streams
    assert keys.events_key(prefix, bucket).startswith(keys.user_prefix(prefix, bucket))


async def test_events_can_be_turned_off(
    make_store: StoreFactory, backend: Backend, prefix: str
) -> None:
    store = make_store(events=False)
    s = await store.create("erin", ["g"])
    await store.add_groups("erin", "h")
    assert s.token
    await store.delete("erin", s.token)
    assert await backend.keys(prefix, streams=True) == []


async def test_each_stream_is_capped(
    make_store: StoreFactory, backend: Backend, prefix: str
) -> None:
    store = make_store(events_maxlen=10)
    for _ in range(300):
        await store.create("frank")
    stream = stream_of(prefix, "frank")
    length = await backend.client.xlen(stream)
    # MAXLEN ~ trims whole stream nodes (100 entries by default), never below the cap.
    assert 10 <= length <= 10 + 100


@pytest.mark.parametrize(
    "options",
    [
        {"group": ""},
        {"consumer": 7},
        {"count": 0},
        {"block": -1},
        {"start": "oldest"},
        {"claim_after": timedelta(0)},
    ],
)
async def test_bad_consumer_options_are_refused(
    make_store: StoreFactory, options: dict[str, Any]
) -> None:
    args: dict[str, Any] = {"group": "g", "consumer": "c"} | options
    with pytest.raises(ValidationError) as err:
        EventConsumer(make_store(), **args)
    assert next(iter(options)) in err.value.message


@pytest.mark.parametrize("bad", [0, -5, "many", True, None, 1_000_001])
async def test_bad_events_maxlen_is_refused(make_store: StoreFactory, bad: object) -> None:
    with pytest.raises(ValidationError, match="events_maxlen"):
        make_store(events_maxlen=bad)


async def test_a_consumer_that_restarts_misses_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    first = consumer(store, count=5)
    await first.setup()
    made = [await store.create(f"user{i}") for i in range(12)]
    batch = await first.read()
    assert 0 < len(batch) <= 5
    await first.ack(*batch[:2])  # the worker dies with the rest unacknowledged
    del first
    made += [await store.create(f"user{i}") for i in range(12, 20)]  # while it is away

    again = consumer(store, count=5)
    events = await drain(again)
    ids = [e.session_ids[0] for e in events]
    assert sorted(ids + [e.session_ids[0] for e in batch[:2]]) == sorted(s.id for s in made)
    assert len(set(ids)) == len(ids)  # nothing delivered twice after its ack
    assert [e.session_ids[0] for e in events[: len(batch) - 2]] == [
        e.session_ids[0] for e in batch[2:]
    ]  # the unacknowledged come back first
    assert await drain(consumer(store)) == []


async def test_start_all_delivers_what_the_streams_hold(make_store: StoreFactory) -> None:
    store = make_store()
    before = await store.create("gina")
    late = consumer(store, start="all")
    assert [e.session_ids for e in await drain(late)] == [(before.id,)]
    fresh = consumer(store, group="latecomers")  # start="new": only what comes next
    await fresh.setup()
    after = await store.create("gina")
    assert [e.session_ids for e in await drain(fresh)] == [(after.id,)]


async def test_a_group_shares_the_work_and_each_event_goes_to_one_consumer(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    workers = [consumer(store, f"w{i}", count=3) for i in range(3)]
    for w in workers:
        await w.setup()
    made = await asyncio.gather(*(store.create(f"u{i}") for i in range(60)))
    got = await asyncio.gather(*(drain(w) for w in workers))
    ids = [e.session_ids[0] for events in got for e in events]
    assert sorted(ids) == sorted(s.id for s in made)


async def test_events_a_dead_consumer_left_are_claimed(make_store: StoreFactory) -> None:
    store = make_store()
    dead = consumer(store, "dead")
    await dead.setup()
    made = [await store.create(f"h{i}") for i in range(5)]
    assert len(await drain(dead, ack=False)) == 5
    await asyncio.sleep(0.05)
    heir = consumer(store, "heir", claim_after=0.01)
    events = await drain(heir)
    assert sorted(e.session_ids[0] for e in events) == sorted(s.id for s in made)


async def test_concurrent_changes_give_one_event_per_change(make_store: StoreFactory) -> None:
    """Many tasks race to delete the same sessions: exactly the calls that
    deleted something wrote an event, and each session's deletion was
    reported once."""
    store = make_store()
    watch = consumer(store, count=1000)
    await watch.setup()
    made = [await store.create("ivan") for _ in range(20)]
    outcomes = await asyncio.gather(
        *(store.delete("ivan", s.token or "") for s in made for _ in range(4)),
        *(store.add_groups("ivan", f"g{i % 3}") for i in range(15)),
    )
    events = [e for e in await drain(watch) if e.type != "created"]
    deleted = [e.session_ids[0] for e in events if e.type == "deleted"]
    assert sorted(deleted) == sorted(s.id for s in made)
    assert sum(o is True for o in outcomes[:80]) == len(deleted)
    added = [e for e in events if e.type == "groups_added"]
    assert len(added) == sum(1 for n in outcomes[80:] if n)
    assert sum(len(e.session_ids) for e in added) == sum(outcomes[80:])


async def test_a_pending_event_trimmed_away_is_let_go(
    make_store: StoreFactory, backend: Backend, prefix: str
) -> None:
    store = make_store()
    reader = consumer(store)
    await reader.setup()
    await store.create("judy")
    assert len(await drain(reader, ack=False)) == 1
    stream = stream_of(prefix, "judy")
    await backend.client.xtrim(stream, maxlen=0)
    later = await store.create("judy")
    again = consumer(store)
    assert [e.session_ids for e in await drain(again)] == [(later.id,)]
    assert await drain(consumer(store)) == []  # the trimmed one is no longer pending


async def test_a_deleted_stream_is_read_again_from_its_start(
    make_store: StoreFactory, backend: Backend, prefix: str
) -> None:
    store = make_store()
    reader = consumer(store)
    await reader.setup()
    stream = stream_of(prefix, "kim")
    await backend.client.delete(stream)  # FLUSHALL, a lost shard
    s = await store.create("kim")
    assert [e.session_ids for e in await drain(reader)] == [(s.id,)]


async def test_tail_follows_changes_from_now(make_store: StoreFactory) -> None:
    store = make_store()
    await store.create("old")
    got: list[Event] = []
    done = asyncio.Event()

    async def follow() -> None:
        async for event in tail(store, block=0.05):
            got.append(event)
            if sum(e.user_id == "new" for e in got) == 3:
                done.set()

    task = asyncio.create_task(follow())
    try:
        # Until tail has taken its starting point (one read of every
        # stream's last entry, slow on a loaded machine), a change may fall
        # before it: probe until one is seen, then make the real changes.
        async with asyncio.timeout(30):
            while not any(e.user_id == "probe" for e in got):
                await store.create("probe")
                await asyncio.sleep(0.05)
        s = await store.create("new", ["g"])
        await store.add_groups("new", "h")
        await store.delete_all("new")
        async with asyncio.timeout(10):
            await done.wait()
    finally:
        task.cancel()
        # A cancelled tail stops at once: wait for it here, not in whatever
        # runs after this test (the session's loop, when it closes).
        stopped, _ = await asyncio.wait({task}, timeout=10)
        assert stopped, f"tail did not stop when cancelled: {task.get_stack()}"
    assert all(e.user_id != "old" for e in got)  # from now: not before
    news = [e for e in got if e.user_id != "probe"]
    assert [e.type for e in news] == ["created", "groups_added", "all_deleted"]
    assert news[0].session_ids == (s.id,)


async def test_tail_from_now_starts_after_the_last_entry_not_at_the_clock(
    make_store: StoreFactory, prefix: str
) -> None:
    """Now is each stream's last entry: neither an event written in the
    same millisecond just before the start, nor one whose id runs ahead of
    the server clock (a failover to a node whose clock is behind: ids never
    go back), is "from now"."""
    store = make_store()
    before = await store.create("before")
    name = stream_of(prefix, "before")
    client: Any = store.client
    [(last, _)] = await client.xrevrange(name, count=1)
    ms, n = map(int, last.decode().split("-"))
    ahead = {"type": "created", "user": "before", "sessions": before.id, "groups": "[]"}
    await client.xadd(name, ahead, id=f"{ms + 60_000}-{n + 1}")
    for _ in range(3):
        stream = tail(store, block=0.05)
        first = asyncio.ensure_future(anext(stream))  # takes its start at once
        deadline = time.monotonic() + 10
        while not first.done() and time.monotonic() < deadline:
            await store.create("before")  # until the tail, started, sees one
            await asyncio.sleep(0.01)
        event = await first
        await stream.aclose()
        assert event.user_id == "before" and event.at > datetime.now(UTC)
        assert event.session_ids != (before.id,)


async def test_entries_are_numbered_from_one_without_gaps_whatever_befalls_the_counter(
    make_store: StoreFactory, backend: Backend, prefix: str
) -> None:
    """An entry's id is ``<ms>-<n>``, n counting the stream's entries. The
    counter beside the stream only saves reading the stream back: lost, it
    is set again from the stream; with the stream gone, the numbering starts
    again at 1; behind an id ahead of the clock (a failover to a node whose
    clock is behind), the next entry follows that id."""
    store = make_store()
    stream = stream_of(prefix, "nina")
    counter = f"{stream}:n"
    client: Any = backend.client

    async def ids() -> list[tuple[int, int]]:
        return [
            (int(ms), int(n))
            for ms, _, n in (i.decode().partition("-") for i, _ in await client.xrange(stream))
        ]

    for _ in range(3):
        await store.create("nina")
    assert [n for _, n in await ids()] == [1, 2, 3]
    assert int(await client.get(counter)) == 3

    await client.delete(counter)  # by hand, or maxmemory eviction
    await store.create("nina")
    assert [n for _, n in await ids()] == [1, 2, 3, 4]
    assert int(await client.get(counter)) == 4

    await client.delete(stream)  # FLUSHALL on a shard, by hand: the counter stays
    await store.create("nina")
    assert [n for _, n in await ids()] == [1]

    [(ms, _)] = await ids()
    ahead = {"type": "created", "user": "nina", "sessions": "x", "groups": "[]"}
    await client.xadd(stream, ahead, id=f"{ms + 60_000}-2")  # the counter still says 1
    await store.create("nina")
    await store.create("nina")
    assert await ids() == [(ms, 1), (ms + 60_000, 2), (ms + 60_000, 3), (ms + 60_000, 4)]
    assert int(await client.get(counter)) == 4


async def test_a_create_at_its_cap_numbers_both_its_events_whatever_befalls_the_counter(
    make_store: StoreFactory, backend: Backend, prefix: str
) -> None:
    """A create at the cap writes its eviction's entry, then its own, one
    number after the other, also when the counter was lost before it."""
    store = make_store(max_sessions_per_user=1)
    stream = stream_of(prefix, "otto")
    client: Any = backend.client
    first = await store.create("otto")
    await client.delete(f"{stream}:n")
    second = await store.create("otto")  # evicts the first
    await store.create("otto")  # evicts the second, the counter trusted again
    entries = [
        (i.decode().partition("-")[2], f[b"type"].decode(), f[b"sessions"].decode())
        for i, f in await client.xrange(stream)
    ]
    assert entries == [
        ("1", "created", first.id),
        ("2", "evicted", first.id),
        ("3", "created", second.id),
        ("4", "evicted", second.id),
        ("5", "created", entries[4][2]),
    ]
    assert int(await client.get(f"{stream}:n")) == 5

    # Behind an entry ahead of the clock (a failover to a node whose clock is
    # behind), both entries follow it.
    ms = int((await client.xrange(stream))[-1][0].decode().partition("-")[0])
    ahead = {"type": "created", "user": "otto", "sessions": "x", "groups": "[]"}
    await client.xadd(stream, ahead, id=f"{ms + 60_000}-6")
    await client.set(f"{stream}:n", 6)
    await store.create("otto")
    tail = [i.decode() for i, _ in await client.xrange(stream)][-3:]
    assert tail == [f"{ms + 60_000}-{n}" for n in (6, 7, 8)]
    assert int(await client.get(f"{stream}:n")) == 8


async def test_a_group_named_like_a_cluster_error_gets_its_deleted_stream_back(
    make_store: StoreFactory, prefix: str
) -> None:
    """NOGROUP quotes the group's name: a group called "ASK-MOVED" must not
    make a deleted stream look like a slot move (retried, then a failure)."""
    store = make_store()
    reader = consumer(store, group="ASK-MOVED-TRYAGAIN")
    await reader.setup()
    await store.create("una")
    await store.client.delete(stream_of(prefix, "una"))  # the stream is gone
    s = await store.create("una")
    assert seen(await drain(reader)) == [("created", "una", (s.id,), ())]


async def test_tail_reads_a_naive_since_as_utc(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the CLI does, whatever the machine's local time zone."""
    monkeypatch.setenv("TZ", "XXX+5")  # five hours behind UTC
    time.tzset()
    try:
        store = make_store()
        await store.create("vic")
        since = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1)
        stream = tail(store, since=since, block=0.05)
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.2)
        await store.create("wes")  # a tail starting five hours late would give neither
        event = await asyncio.wait_for(first, 10)
        await stream.aclose()
        assert event.user_id == "vic"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def neighbours(n: int) -> list[str]:
    """`n` user ids whose events share one stream (one hash-tag bucket)."""
    by_bucket: dict[int, list[str]] = {}
    for i in itertools.count():
        user = f"user{i}"
        found = by_bucket.setdefault(keys.user_digest(user)[1], [])
        found.append(user)
        if len(found) == n:
            return found
    raise AssertionError("unreachable")


@pytest.mark.parametrize("start", ["new", "all"])
async def test_status_counts_exactly_what_a_neighbours_flood_trimmed_before_a_group_read(
    make_store: StoreFactory, prefix: str, start: str
) -> None:
    """A user in the same bucket signs in and out in a loop and pushes a
    lagging group's events out of the capped stream: the group has not read
    yet, and status() says exactly how many it lost."""
    victim, flooder = neighbours(2)
    store = make_store(events_maxlen=50)
    stream = stream_of(prefix, victim)
    await store.create(flooder)  # the stream holds an entry before the group exists
    reader = consumer(store, start=start)
    await reader.setup()
    await store.create(victim, ["g"])
    await store.remove_groups(victim, "g")
    for _ in range(150):
        await store.delete_all(flooder)
        await store.create(flooder)
    written = (3 if start == "all" else 2) + 2 * 150  # the entries the group may read
    held = await store.client.xlen(stream)
    assert held < written  # the cap trimmed some of them

    status = await reader.status()
    assert (status.lost, status.undelivered, status.lost_streams) == (
        written - held,
        held,
        (stream,),
    )
    delivered = await drain(reader)
    assert len(delivered) == held
    assert victim not in {e.user_id for e in delivered}  # the lost ones never come
    after = await reader.status()
    assert (after.lost, after.undelivered, after.lost_streams) == (0, 0, ())


async def test_a_store_made_from_a_url_feeds_a_consumer(server_url: str, prefix: str) -> None:
    async with SessionStore.from_url(server_url, prefix=prefix) as store:
        reader = consumer(store, block=0.2)
        await reader.setup()
        await store.create("lee", "g")
        events = await drain(reader)
        assert Counter(e.type for e in events) == {"created": 1}


async def test_a_resp3_client_reads_events_too(server_url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(server_url, protocol=3)
    try:
        store = SessionStore(client, prefix=prefix)
        reader = consumer(store)
        await reader.setup()
        s = await store.create("mona", ["g"])
        assert seen(await drain(reader)) == [("created", "mona", (s.id,), ("g",))]
    finally:
        await client.aclose()


@pytest.mark.server
@pytest.mark.usefixtures("drops_connections")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_consumer_rides_out_killed_connections(server_url: str, prefix: str) -> None:
    """The consumer's connection is killed while it waits for events: it
    reconnects, and every event still arrives."""
    admin = aioredis.Redis.from_url(server_url)
    async with SessionStore.from_url(server_url, prefix=prefix) as store:
        reader = consumer(store, block=5.0)
        await reader.setup()
        got: list[Event] = []

        async def read_until(n: int) -> None:
            while len(got) < n:
                batch = await reader.read()
                got.extend(batch)
                await reader.ack(*batch)

        task = asyncio.create_task(read_until(10))
        for i in range(10):
            await asyncio.sleep(0.05)
            await admin.client_kill_filter(_type="normal", skipme=True)
            await store.create(f"k{i}")
        await asyncio.wait_for(task, 30)
    await admin.aclose()
    assert sorted(e.user_id for e in got) == sorted(f"k{i}" for i in range(10))


async def test_status_tells_pending_undelivered_and_events_lost_to_the_cap(
    make_store: StoreFactory, prefix: str
) -> None:
    store = make_store()
    reader = consumer(store, count=2)
    await reader.setup()
    for _ in range(3):
        await store.create("ann")
    first = await reader.read()
    assert len(first) == 2
    status = await reader.status()
    assert (status.group, status.pending, status.undelivered, status.lost) == ("g", 2, 1, 0)
    assert status.lost_streams == ()

    # The group falls far behind a small cap: the oldest events are trimmed.
    capped = make_store(events_maxlen=1, max_sessions_per_user=1000)  # no evictions
    for _ in range(250):
        await capped.create("ann")
    stream = stream_of(prefix, "ann")
    behind = await reader.status()
    assert behind.lost_streams == (stream,)
    assert behind.lost is not None and behind.undelivered is not None
    assert behind.lost > 0 and behind.lost + behind.undelivered == 1 + 250
    left = await capped.client.xlen(stream)
    assert behind.undelivered == left  # all that is left came after the group's last read

    await reader.ack(*first)
    assert len(await drain(reader)) == behind.undelivered  # the lost ones never come
    status = await reader.status()
    assert (status.pending, status.undelivered, status.lost, status.lost_streams) == (0, 0, 0, ())
