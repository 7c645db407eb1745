"""The ASGI session layer on Starlette and FastAPI apps, over httpx, against
the real embedded server."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI
from litestar import Litestar, get
from litestar import Request as LitestarRequest
from litestar.middleware import DefineMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sessionkit import Session, SessionStore
from sessionkit import _keys as keys
from sessionkit.web import (
    SessionMiddleware,
    altogic_routes,
    get_session,
    require_groups,
    require_session,
    sign_in,
    sign_out,
    sign_out_everywhere,
    sign_out_everywhere_else,
)

pytestmark = [pytest.mark.server, pytest.mark.backends("server")]
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


def starlette_app(store: SessionStore, **options: Any) -> Starlette:
    async def whoami(request: Request) -> JSONResponse:
        s = get_session(request)
        return JSONResponse(s.to_dict() if s else None)

    async def login(request: Request) -> JSONResponse:
        body = await request.json()
        s = await sign_in(request, body["user"], body.get("groups", []))
        return JSONResponse({"token": s.token, "id": s.id})

    async def logout(request: Request) -> JSONResponse:
        return JSONResponse({"done": await sign_out(request)})

    async def logout_others(request: Request) -> JSONResponse:
        return JSONResponse({"n": await sign_out_everywhere_else(request)})

    async def logout_all(request: Request) -> JSONResponse:
        return JSONResponse({"n": await sign_out_everywhere(request)})

    @require_session
    async def private(request: Request) -> JSONResponse:
        session = get_session(request)
        assert session is not None  # require_session let the request through
        return JSONResponse({"user": session.user_id})

    @require_groups("admin", "root")
    async def admin(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    @require_groups("a", "b", mode="all")
    async def both(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/whoami", whoami),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/logout-others", logout_others, methods=["POST"]),
            Route("/logout-all", logout_all, methods=["POST"]),
            Route("/private", private),
            Route("/admin", admin),
            Route("/both", both),
            *altogic_routes(),
        ]
    )
    app.add_middleware(SessionMiddleware, store=store, **options)
    return app


def fastapi_app(store: SessionStore) -> FastAPI:
    app = FastAPI()
    app.add_middleware(SessionMiddleware, store=store)

    @app.post("/login")
    async def login(request: Request) -> dict[str, Any]:
        body = await request.json()
        s = await sign_in(request, body["user"], body.get("groups", []))
        return {"token": s.token}

    @app.get("/private")
    async def private(session: Session = Depends(require_session)) -> dict[str, Any]:  # noqa: B008
        return {"user": session.user_id, "groups": session.access_groups}

    @app.get("/admin")
    async def admin(session: Session = Depends(require_groups("admin"))) -> dict[str, Any]:  # noqa: B008
        return {"user": session.user_id}

    return app


def client_for(app: Any, base: str = "https://testserver") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


async def test_no_token_means_no_session_and_a_401_on_guarded_routes(store: SessionStore) -> None:
    async with client_for(starlette_app(store)) as http:
        r = await http.get("/whoami")
        assert r.status_code == 200 and r.json() is None
        assert "set-cookie" not in r.headers
        r = await http.get("/private")
        assert r.status_code == 401
        assert r.json() == {
            "errors": [
                {
                    "origin": "client",
                    "code": "missing_session_token",
                    "message": r.json()["errors"][0]["message"],
                }
            ]
        }
        r = await http.get("/private", headers={"Session": "not-a-real-token"})
        assert r.status_code == 401
        assert r.json()["errors"][0]["code"] == "invalid_session_token"


async def test_sign_in_sets_a_safe_cookie_and_the_token_works_from_header_or_cookie(
    store: SessionStore,
) -> None:
    async with client_for(starlette_app(store)) as http:
        r = await http.post("/login", json={"user": "alice", "groups": ["member"]},
                            headers={"User-Agent": FIREFOX})  # fmt: skip
        token = r.json()["token"]
        cookie = r.headers["set-cookie"]
        attrs = [a.strip() for a in cookie.split(";")]
        assert attrs[0] == f"__Host-sessionkit={token}"  # Secure, Path=/, no Domain
        assert {"HttpOnly", "SameSite=Lax", "Secure", "Path=/"} <= set(attrs)
        max_age = int(next(a for a in attrs if a.startswith("Max-Age=")).split("=")[1])
        assert 14 * 86400 - 5 <= max_age <= 14 * 86400
        # The cookie jar now sends it back.
        me = (await http.get("/whoami")).json()
        assert me["userId"] == "alice" and me["userAgent"]["family"] == "Firefox"
        bob = await store.create("bob")
        # The Session header wins over the cookie.
        assert (await http.get("/whoami", headers={"Session": bob.token or ""})).json()[
            "userId"
        ] == "bob"
    async with client_for(starlette_app(store)) as fresh:
        assert (await fresh.get("/private", headers={"Session": token})).json() == {"user": "alice"}


async def test_plain_http_apps_get_cookies_without_secure(store: SessionStore) -> None:
    async with client_for(starlette_app(store, secure=False), "http://testserver") as http:
        r = await http.post("/login", json={"user": "alice"})
        assert "Secure" not in r.headers["set-cookie"]
        assert r.headers["set-cookie"].startswith("sessionkit=")  # __Host- needs Secure
        assert (await http.get("/private")).status_code == 200


async def test_sign_in_always_issues_a_new_token_and_revokes_the_old(store: SessionStore) -> None:
    planted = await store.create("victim")
    async with client_for(starlette_app(store)) as http:
        http.cookies.set("__Host-sessionkit", planted.token or "")
        r = await http.post("/login", json={"user": "victim"})
        new = r.json()["token"]
        assert new != planted.token
        assert await store.resolve(planted.token or "") is None
        assert await store.resolve(new) is not None


async def test_sign_out_variants(store: SessionStore) -> None:
    others = [await store.create("carol") for _ in range(2)]
    async with client_for(starlette_app(store)) as http:
        await http.post("/login", json={"user": "carol"})
        assert (await http.post("/logout-others")).json() == {"n": 2}
        assert all([await store.resolve(o.token or "") is None for o in others])
        assert len(await store.list("carol")) == 1
        r = await http.post("/logout")
        assert r.json() == {"done": True}
        assert "Max-Age=0" in r.headers["set-cookie"]
        assert await store.list("carol") == []
        assert (await http.get("/private")).status_code == 401
        await http.post("/login", json={"user": "carol"})
        await store.create("carol")
        r = await http.post("/logout-all")
        assert r.json() == {"n": 2} and "Max-Age=0" in r.headers["set-cookie"]
        assert await store.list("carol") == []


async def test_group_guards_and_changes_take_effect_on_the_next_request(
    store: SessionStore,
) -> None:
    async with client_for(starlette_app(store)) as http:
        await http.post("/login", json={"user": "dave", "groups": ["a"]})
        r = await http.get("/admin")
        assert r.status_code == 403 and r.json()["errors"][0]["code"] == "forbidden"
        assert (await http.get("/both")).status_code == 403
        await store.add_groups("dave", ["root", "b"])
        assert (await http.get("/admin")).status_code == 200  # any of admin, root
        assert (await http.get("/both")).status_code == 200  # all of a, b
        await store.remove_groups("dave", "root")
        assert (await http.get("/admin")).status_code == 403


async def test_fastapi_dependencies_return_the_session(store: SessionStore) -> None:
    async with client_for(fastapi_app(store)) as http:
        r = await http.get("/private")
        assert r.status_code == 401 and r.json()["errors"][0]["code"] == "missing_session_token"
        token = (await http.post("/login", json={"user": "erin", "groups": ["x"]})).json()["token"]
        assert (await http.get("/private")).json() == {"user": "erin", "groups": ["x"]}
        r = await http.get("/admin")
        assert r.status_code == 403 and r.json()["errors"][0]["origin"] == "client"
        await store.add_groups("erin", "admin")
        assert (await http.get("/admin", headers={"Session": token})).json() == {"user": "erin"}


async def test_an_unchanged_request_writes_nothing(store: SessionStore, server_url: str) -> None:
    admin = aioredis.Redis.from_url(server_url)
    try:
        async with client_for(starlette_app(store)) as http:
            await http.post("/login", json={"user": "frank"})
            # Scripts another test flushed would come back by EVAL, a write.
            await store.load_scripts()
            await admin.config_resetstat()
            for _ in range(10):
                r = await http.get("/private")
                assert r.status_code == 200 and "set-cookie" not in r.headers
                r = await http.get("/whoami")
                assert "set-cookie" not in r.headers
            stats = await admin.info("commandstats")
        calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
        assert calls["evalsha"] == 20  # one resolve per request
        writes = {"set", "setrange", "zadd", "del", "pexpire", "pexpireat", "zrem", "eval"}
        assert not writes & set(calls), calls
    finally:
        await admin.aclose()


async def test_other_scopes_pass_through_untouched(store: SessionStore) -> None:
    seen: list[dict[str, Any]] = []

    async def inner(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        seen.append(dict(scope))

    mw = SessionMiddleware(inner, store)
    await mw({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == [{"type": "lifespan"}]


async def test_altogic_endpoints(store: SessionStore) -> None:
    base = "/_api/rest/v1/auth"
    other_user = await store.create("mallory")
    async with client_for(starlette_app(store)) as http:
        assert (await http.get(f"{base}/sessions")).status_code == 401
        me = (await http.post("/login", json={"user": "gina"})).json()
        tablet = await store.create("gina")
        phone = await store.create("gina")
        hdr = {"Session": me["token"]}
        listing = (await http.get(f"{base}/sessions", headers=hdr)).json()
        assert [s["token"] for s in listing] == [me["token"], tablet.id, phone.id]
        assert all(s["userId"] == "gina" for s in listing)
        assert all("data" not in s and "raw" not in (s["userAgent"] or {}) for s in listing)
        # A handle of another user's session: 403, and nothing is deleted.
        r = await http.post(f"{base}/signout", json={"token": other_user.id}, headers=hdr)
        assert r.status_code == 403 and r.json()["errors"][0]["code"] == "forbidden"
        assert await store.resolve(other_user.token or "") is not None
        # An unknown handle or token, in the user's bucket or any other: 200,
        # nothing done (the README's promise).
        unknown = phone.id[:10] + ("A" if phone.id[10] != "A" else "B") + phone.id[11:]
        elsewhere = keys.session_id(keys.new_token((keys.user_digest("gina")[1] + 1) % 1024))
        for handle in (unknown, elsewhere, keys.new_token(3)):
            r = await http.post(f"{base}/signout", json={"token": handle}, headers=hdr)
            assert r.status_code == 200 and len(await store.list("gina")) == 3
        r = await http.post(f"{base}/signout", json={"token": tablet.id}, headers=hdr)
        assert r.status_code == 200 and await store.resolve(tablet.token or "") is None
        r = await http.post(f"{base}/signout-all-except", headers=hdr)
        assert r.status_code == 200
        assert [s.id for s in await store.list("gina")] == [me["id"]]
        r = await http.post(f"{base}/signout-all", headers=hdr)
        assert r.status_code == 200 and await store.list("gina") == []
        r = await http.get(f"{base}/sessions", headers=hdr)
        assert r.status_code == 401
        # An empty token means "this session", as altogic's client sends it.
        me = (await http.post("/login", json={"user": "gina"})).json()
        hdr = {"Session": me["token"]}
        r = await http.post(f"{base}/signout", json={"token": ""}, headers=hdr)
        assert r.status_code == 200 and await store.resolve(me["token"]) is None
        r = await http.get(f"{base}/sessions", headers=hdr)
        assert r.status_code == 401 and r.json()["errors"][0]["code"] == "invalid_session_token"


async def test_litestar_app_gets_the_session(store: SessionStore) -> None:
    @get("/whoami", sync_to_thread=False)
    def whoami(request: LitestarRequest[Any, Any, Any]) -> dict[str, Any]:
        s = get_session(request)
        return {"user": s.user_id if s else None, "groups": s.access_groups if s else []}

    app = Litestar(
        route_handlers=[whoami],
        middleware=[DefineMiddleware(SessionMiddleware, store=store)],  # type: ignore[arg-type]
    )
    s = await store.create("lit", "g")
    async with client_for(app) as http:
        assert (await http.get("/whoami")).json() == {"user": None, "groups": []}
        r = await http.get("/whoami", headers={"Session": s.token or ""})
        assert r.json() == {"user": "lit", "groups": ["g"]}
        http.cookies.set("__Host-sessionkit", s.token or "")
        assert (await http.get("/whoami")).json()["user"] == "lit"


@pytest.mark.parametrize("ours", ["outside", "inside"])
async def test_starlettes_cookie_session_works_beside_ours(store: SessionStore, ours: str) -> None:
    """OAuth clients keep their state in Starlette's `request.session`
    (``scope["session"]``); sessionkit keeps to ``scope["sessionkit"]``."""
    from starlette.middleware.sessions import SessionMiddleware as CookieSessions

    async def login(request: Request) -> JSONResponse:
        request.session["oauth_state"] = "xyz"
        s = await sign_in(request, "olga", ["member"])
        return JSONResponse({"token": s.token, "state": request.session["oauth_state"]})

    async def me(request: Request) -> JSONResponse:
        s = get_session(request)
        return JSONResponse(
            {"user": s.user_id if s else None, "state": request.session.get("oauth_state")}
        )

    app = Starlette(routes=[Route("/login", login, methods=["POST"]), Route("/me", me)])
    layers: list[tuple[Any, dict[str, Any]]] = [
        (CookieSessions, {"secret_key": "not-a-secret"}),
        (SessionMiddleware, {"store": store}),
    ]
    for layer, options in layers if ours == "outside" else layers[::-1]:
        app.add_middleware(layer, **options)  # the last one added is the outermost
    async with client_for(app) as client:
        r = await client.post("/login")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "xyz" and r.json()["token"]
        shown = (await client.get("/me")).json()
        assert shown == {"user": "olga", "state": "xyz"}


@pytest.mark.usefixtures("drops_connections")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_dead_session_server_is_a_503_answer_not_a_crash() -> None:
    """The platform's client reads a JSON body on every answer: a bare 500
    would leave its promise hanging."""
    from sessionkit.server import EmbeddedServer

    server = EmbeddedServer()
    server.start()
    store = SessionStore.from_url(server.url, socket_timeout=0.5, retries=0)
    try:
        async with client_for(starlette_app(store)) as client:
            token = (await client.post("/login", json={"user": "pat"})).json()["token"]
            server.kill()
            for method, path, headers in [
                ("GET", "/private", {"Session": token}),  # the middleware's resolve
                ("POST", "/login", {}),  # a helper's create, no token
                ("GET", "/_api/rest/v1/auth/sessions", {"Session": token}),
            ]:
                r = await client.request(method, path, headers=headers, json={"user": "pat"})
                assert r.status_code == 503, (path, r.text)
                assert r.headers["retry-after"] == "1"
                [entry] = r.json()["errors"]
                assert (entry["origin"], entry["code"]) == ("server", "backend_unavailable")
                assert str(server.port) not in r.text and "127.0.0.1" not in r.text
    finally:
        await store.aclose()
        server.stop()


def _cookie_scope(*cookie_headers: bytes) -> dict[str, Any]:
    return {"type": "http", "headers": [(b"cookie", h) for h in cookie_headers]}


def test_the_cookie_is_found_in_any_cookie_header_and_past_malformed_ones(
    store: SessionStore,
) -> None:
    mw = SessionMiddleware(starlette_app(store), store, secure=False)
    token = b"A" * 46
    found = (token.decode(), True)
    assert mw._token(_cookie_scope(b"theme=dark", b"sessionkit=" + token)) == found
    assert mw._token(_cookie_scope(b'bad"cookie; x=\\"\\; sessionkit=' + token)) == found
    # Ours twice (e.g. one planted by a sibling subdomain): no session at all.
    none = (None, False)
    assert mw._token(_cookie_scope(b"sessionkit=" + token, b"sessionkit=" + b"B" * 46)) == none
    assert mw._token(_cookie_scope(b"sessionkit=" + token + b"; sessionkit=x")) == none
    assert mw._token(_cookie_scope(b"other_sessionkit=" + token)) == none


def test_cookie_parsing_is_linear_in_the_header_size(store: SessionStore) -> None:
    """A hostile Cookie header (the shape that made http.cookies quadratic,
    CVE-2024-7592): 8x the size costs at most about 8x the time."""
    mw = SessionMiddleware(starlette_app(store), store)

    def cost(size: int) -> float:
        header = b'a="' + b"\\" * size + b'"; __Host-sessionkit=' + b"A" * 46
        scope = _cookie_scope(header)
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(20):
                assert mw._token(scope) == ("A" * 46, True)
            best = min(best, time.perf_counter() - started)
        return best

    assert cost(64 * 1024) <= 8 * cost(8 * 1024)


async def test_a_cross_site_write_does_not_get_the_cookie_session(store: SessionStore) -> None:
    """SameSite=Lax is not the only defence: an unsafe request that a
    browser marks as cross-site, or whose Origin is foreign, gets no session
    from the cookie; the platform's routes say why."""
    app = starlette_app(store, trusted_origins=["https://admin.example"])
    async with client_for(app) as http:
        token = (await http.post("/login", json={"user": "cara"})).json()["token"]
        signout = "/_api/rest/v1/auth/signout"
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Origin": "null"}):  # fmt: skip
            r = await http.post("/logout-all", headers=headers)
            assert r.json() == {"n": 0}  # no session: nothing signed out
            r = await http.post(signout, headers=headers)
            assert (r.status_code, r.json()["errors"][0]["code"]) == (403, "csrf_rejected")
            assert await store.resolve(token) is not None
        # Safe methods, the app's own origin, a trusted origin: as before.
        assert (await http.get("/private", headers={"Origin": "https://evil.example"})).json() == {
            "user": "cara"
        }
        for origin in ("https://testserver", "https://admin.example"):
            ok = await http.post("/logout-others", headers={"Origin": origin})
            assert ok.status_code == 200 and ok.json() == {"n": 0}
    # A request that carries the token in the Session header (the platform's
    # client) is no cookie-riding request: unaffected.
    async with client_for(app) as api:
        r = await api.post("/logout-all", headers={"Session": token, "Origin": "https://x.example"})
        assert r.json() == {"n": 1}


async def test_signout_bodies_must_be_json(store: SessionStore) -> None:
    """A cross-site form can post text/plain without asking first; JSON it cannot."""
    s = await store.create("dot")
    async with client_for(starlette_app(store)) as api:
        headers = {"Session": s.token or "", "Content-Type": "text/plain"}
        r = await api.post(
            "/_api/rest/v1/auth/signout", content=b'{"token": null}', headers=headers
        )
        assert r.status_code == 415 and r.json()["errors"][0]["code"] == "unsupported_media_type"
        assert await store.resolve(s.token or "") is not None
        r = await api.post(
            "/_api/rest/v1/auth/signout", json={}, headers={"Session": s.token or ""}
        )
        assert r.status_code == 200 and await store.resolve(s.token or "") is None
