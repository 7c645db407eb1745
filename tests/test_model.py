"""A model that cannot be fooled: random sequences of every operation against
the real server, each result compared with a plain in-memory model; a
concurrent variant for group changes; and hostile input fuzzed into every
public entry."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sessionkit import SessionKitError, SessionStore, ValidationError
from sessionkit import _keys as keys

pytestmark = pytest.mark.server
T = TypeVar("T")
USERS = ["alice", "{alice}", "bob:1", "日本", "x" * 300]
GROUPS = ["a", "b", "c:d", "{e}"]
SHORT = 0.25  # seconds: the lifetime of the sessions the model lets expire
_prefixes = itertools.count()


class Runner:
    """Runs coroutines on a private event loop (hypothesis drives sync code)."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.Redis.from_url(url)

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self(self.client.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def runner(server_url: str) -> Iterator[Runner]:
    r = Runner(server_url)
    yield r
    r.close()


@dataclass
class Model:
    user: str
    token: str
    id: str
    groups: set[str]
    dies_at: float  # monotonic deadline; inf for long-lived sessions
    created: int = field(default_factory=itertools.count().__next__)


class SessionMachine(RuleBasedStateMachine):
    run: Runner

    def __init__(self) -> None:
        super().__init__()
        prefix = f"model{next(_prefixes)}x{os.getpid()}"
        self.store = SessionStore(self.run.client, prefix=prefix)
        self.short = SessionStore(self.run.client, prefix=prefix, lifetime=SHORT)
        self.sessions: dict[str, Model] = {}
        self.order = itertools.count()

    def live(self, user: str | None = None) -> list[Model]:
        now = time.monotonic()
        return sorted(
            (
                m
                for m in self.sessions.values()
                if m.dies_at > now and (user is None or m.user == user)
            ),
            key=lambda m: m.created,
        )

    def settled(self, m: Model) -> bool:
        """Far enough from its expiry that the server and the model agree."""
        return abs(m.dies_at - time.monotonic()) > 0.05

    @initialize()
    def start(self) -> None:
        pass

    @rule(user=st.sampled_from(USERS), groups=st.sets(st.sampled_from(GROUPS)), short=st.booleans())
    def create(self, user: str, groups: set[str], short: bool) -> None:
        s = self.run((self.short if short else self.store).create(user, sorted(groups)))
        assert s.token and s.user_id == user and s.access_groups == sorted(groups)
        dies = time.monotonic() + SHORT if short else float("inf")
        self.sessions[s.token] = Model(user, s.token, s.id, set(groups), dies, next(self.order))

    @rule(user=st.sampled_from(USERS), pick=st.randoms())
    def get(self, user: str, pick: random.Random) -> None:
        if not self.sessions:
            return
        m = pick.choice(list(self.sessions.values()))
        if not self.settled(m):
            return
        got = self.run(self.store.get(user, m.token))
        if m in self.live() and m.user == user:
            assert got is not None and set(got.access_groups) == m.groups and got.id == m.id
        else:
            assert got is None

    @rule(pick=st.randoms())
    def resolve(self, pick: random.Random) -> None:
        if not self.sessions:
            return
        m = pick.choice(list(self.sessions.values()))
        if not self.settled(m):
            return
        got = self.run(self.store.resolve(m.token))
        if m in self.live():
            assert got is not None and got.user_id == m.user and set(got.access_groups) == m.groups
        else:
            assert got is None

    @rule(user=st.sampled_from(USERS))
    def list_sessions(self, user: str) -> None:
        if not all(self.settled(m) for m in self.sessions.values()):
            return
        got = self.run(self.store.list(user))
        want = self.live(user)
        assert [s.id for s in got] == [m.id for m in want]
        assert [set(s.access_groups) for s in got] == [m.groups for m in want]

    @rule(user=st.sampled_from(USERS), pick=st.randoms(), by_id=st.booleans())
    def delete(self, user: str, pick: random.Random, by_id: bool) -> None:
        if not self.sessions:
            return
        m = pick.choice(list(self.sessions.values()))
        if not self.settled(m):
            return
        call = self.store.delete_by_id(user, m.id) if by_id else self.store.delete(user, m.token)
        done = self.run(call)
        expected = m in self.live() and m.user == user
        assert done is expected
        if done:
            del self.sessions[m.token]

    @rule(user=st.sampled_from(USERS), keep=st.booleans(), pick=st.randoms())
    def delete_all(self, user: str, keep: bool, pick: random.Random) -> None:
        mine = self.live(user)
        if not all(self.settled(m) for m in self.sessions.values()):
            return
        spared = pick.choice(mine) if keep and mine else None
        n = self.run(self.store.delete_all(user, except_token=spared.token if spared else None))
        doomed = [m for m in mine if m is not spared]
        assert n == len(doomed)
        for m in doomed:
            del self.sessions[m.token]

    @rule(user=st.sampled_from(USERS), groups=st.sets(st.sampled_from(GROUPS), min_size=1),
          add=st.booleans())  # fmt: skip
    def change_groups(self, user: str, groups: set[str], add: bool) -> None:
        if not all(self.settled(m) for m in self.sessions.values()):
            return
        call = self.store.add_groups if add else self.store.remove_groups
        n = self.run(call(user, sorted(groups)))
        changed = 0
        for m in self.live(user):
            new = m.groups | groups if add else m.groups - groups
            changed += new != m.groups
            m.groups = new
        assert n == changed

    @precondition(lambda self: any(m.dies_at < float("inf") for m in self.live()))
    @rule()
    def let_time_pass(self) -> None:
        time.sleep(SHORT + 0.06)

    @invariant()
    def nothing_outside_the_prefix(self) -> None:
        assert not self.store.prefix.startswith("{")


def test_random_operation_sequences_match_the_model(runner: Runner) -> None:
    SessionMachine.run = runner
    SessionMachine.TestCase.settings = settings(
        max_examples=12,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    SessionMachine.TestCase().runTest()


def test_concurrent_group_changes_are_linearizable(runner: Runner) -> None:
    store = SessionStore(runner.client, prefix=f"lin{os.getpid()}")
    sessions = [runner(store.create("lin-user")) for _ in range(25)]
    rng = random.Random(3)
    ops = [(rng.choice(["a", "b", "c"]), rng.random() < 0.5) for _ in range(120)]

    async def one(group: str, add: bool) -> tuple[str, bool, int]:
        await asyncio.sleep(rng.random() / 200)
        call = store.add_groups if add else store.remove_groups
        return group, add, await call("lin-user", group)

    async def all_ops() -> list[tuple[str, bool, int]]:
        return list(await asyncio.gather(*(one(g, a) for g, a in ops)))

    results = runner(all_ops())
    final = runner(store.list("lin-user"))
    assert {tuple(s.access_groups) for s in final} == {tuple(final[0].access_groups)}
    for group in "abc":
        # Every call changed all sessions or none; in any serial order, the
        # effective adds and removes of a group alternate, starting with an add.
        mine = [(add, n) for g, add, n in results if g == group]
        assert all(n in (0, len(sessions)) for _, n in mine)
        adds = sum(1 for add, n in mine if add and n)
        removes = sum(1 for add, n in mine if not add and n)
        assert adds - removes in (0, 1)
        assert (group in final[0].access_groups) == (adds - removes == 1)


PRINTABLE_OR_NOT = st.text(alphabet=st.characters(codec="utf-8"), max_size=80) | st.text(
    max_size=20
)
ANYTHING = st.none() | st.integers() | st.floats() | st.binary(max_size=20) | PRINTABLE_OR_NOT
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.mark.one_server  # input checks: the second server adds nothing
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    user=PRINTABLE_OR_NOT | ANYTHING,
    token=PRINTABLE_OR_NOT | ANYTHING,
    groups=ANYTHING | st.lists(PRINTABLE_OR_NOT | ANYTHING, max_size=4),
    data=st.none() | JSONISH | st.dictionaries(st.text(max_size=5), ANYTHING, max_size=3),
)
def test_hostile_input_gives_only_documented_errors(
    runner: Runner, user: Any, token: Any, groups: Any, data: Any
) -> None:
    store = SessionStore(runner.client, prefix="fuzz")
    agent = token if isinstance(token, str) else None
    calls: list[Callable[[], Coroutine[Any, Any, Any]]] = [
        lambda: store.create(user, groups, user_agent=agent, data=data),
        lambda: store.get(user, token),
        lambda: store.resolve(token),
        lambda: store.list(user),
        lambda: store.delete(user, token),
        lambda: store.delete_by_id(user, token),
        lambda: store.delete_all(user, except_token=token if isinstance(token, str) else None),
        lambda: store.add_groups(user, groups),
        lambda: store.remove_groups(user, groups),
    ]  # fmt: skip
    for call in calls:
        try:
            runner(call())
        except ValidationError:
            pass  # documented: bad input, nothing written
        except SessionKitError as exc:  # anything else would be a server fault
            raise AssertionError(f"undocumented error for hostile input: {exc!r}") from exc
    for key in runner(_keys(runner.client, "fuzz")):
        assert key.startswith("fuzz:{") and key.count("{") == 1, key
    assert keys.token_bucket(token) is None or isinstance(token, str)


async def _keys(client: aioredis.Redis, prefix: str) -> list[str]:
    every = [k async for k in client.scan_iter(match="*", count=1000)]
    return [k.decode() for k in every if k.startswith(b"fuzz")]


NODE_PARAMS = st.one_of(
    st.text(max_size=40),  # arbitrary (mostly invalid) CEL
    st.sampled_from(["inputObject.u", "inputObject", "1/0", "[inputObject.u]", "{'a': 1}",
                     "inputObject.u + 1", "size(inputObject)", "null", "true ? 'x' : 2"]),
    ANYTHING,
)  # fmt: skip


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(user_id=NODE_PARAMS, groups=NODE_PARAMS, token=NODE_PARAMS, obj=JSONISH)
def test_hostile_node_parameters_give_only_documented_errors(
    runner: Runner, user_id: Any, groups: Any, token: Any, obj: Any
) -> None:
    from sessionkit.nodes import NODE_TYPES

    store = SessionStore(runner.client, prefix="fuzz")
    candidates = {"user_id": user_id, "access_groups": groups, "token": token}
    for cls in NODE_TYPES.values():
        params = {k: v for k, v in candidates.items() if k in cls.parameters}
        try:
            node = cls(store, error_management="manual", **params)
        except ValidationError:
            continue  # reported when the node is built, naming the parameter
        result = runner(node.run({"inputObject": {"u": obj}}))
        assert result.link in (*cls.outputs, "errors")
        if result.link == "errors":
            for entry in result.value:
                assert set(entry) == {"origin", "code", "message", "details"}
                assert entry["code"] in {"validation_error", "expression_error"}, entry


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    header=st.binary(max_size=60),
    cookie=st.binary(max_size=80),
    path=st.sampled_from(["/", "/private", "/_api/rest/v1/auth/sessions"]),
)
def test_hostile_tokens_and_cookies_never_break_a_request(
    runner: Runner, header: bytes, cookie: bytes, path: str
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from sessionkit.web import SessionMiddleware, altogic_routes, get_session, require_session

    async def home(request: Request) -> JSONResponse:
        return JSONResponse(get_session(request) is not None)

    @require_session
    async def private(request: Request) -> JSONResponse:
        return JSONResponse(True)

    app = Starlette(routes=[Route("/", home), Route("/private", private), *altogic_routes()])
    app.add_middleware(SessionMiddleware, store=SessionStore(runner.client, prefix="fuzz"))
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": [(b"session", header), (b"cookie", cookie)],
        "scheme": "https", "server": ("t", 443), "client": ("c", 1), "root_path": "",
        "http_version": "1.1", "asgi": {"version": "3.0"},
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    runner(app(scope, receive, send))
    status = sent[0]["status"]
    assert status == 200 if path == "/" else status in (200, 401)


def test_the_stored_layout_is_the_same_in_python_and_lua() -> None:
    import re
    from importlib import resources

    from sessionkit import _model as model

    lib = (resources.files("sessionkit") / "lua" / "_lib.lua").read_text("utf-8")

    def lua(*names: str) -> list[int]:
        m = re.search(rf"^local {', '.join(names)} = ([\d, ]+)$", lib, re.M)
        assert m, names
        return [int(v) for v in m.group(1).split(",")]

    assert lua("LAYOUT_BYTE") == [model.LAYOUT]
    assert lua("EXPIRES_AT", "LAST_ACTIVE_AT") == [model.EXPIRES_AT + 1, model.LAST_ACTIVE_AT + 1]
    assert lua("DIGEST_FROM", "DIGEST_TO") == [model.DIGEST + 1, model.BODY]
    # The creation time fills what lies between the version byte and the expiry.
    assert model.CREATED_AT + 16 == model.EXPIRES_AT
    assert model.EXPIRES_AT + 13 == model.LAST_ACTIVE_AT
    assert model.LAST_ACTIVE_AT + 13 == model.DIGEST
