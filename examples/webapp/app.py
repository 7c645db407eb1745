"""The example web app: sign in, see and revoke your sessions, promote users.

A FastAPI app behind `SessionMiddleware`. Anyone can sign in as any user (it
is a demo) and pick whether the new session has the ``admin`` group. Admins
promote or demote users to ``editor`` across all their sessions; ``/editor``
is guarded by that group and sees the change on the very next request.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from sessionkit import Session, SessionStore
from sessionkit.web import (
    SessionMiddleware,
    altogic_routes,
    get_session,
    require_groups,
    sign_in,
    sign_out,
    sign_out_everywhere_else,
)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sessionkit demo</title>
<style>
 body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 60rem; }}
 table {{ border-collapse: collapse; width: 100%; }}
 th, td {{ border-bottom: 1px solid #ddd; padding: .4rem; text-align: left; }}
 .current {{ background: #eef8ee; }} form {{ display: inline; }}
</style></head><body>
<h1>sessionkit demo</h1>
{body}
</body></html>"""


async def _form(request: Request) -> dict[str, str]:
    fields = parse_qs((await request.body()).decode(), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def _sessions_table(sessions: list[Session], current: Session) -> str:
    rows = []
    for s in sessions:
        ua = s.user_agent
        device = ua.device.family if ua else "-"
        system = ua.os.family if ua else "-"
        browser = f"{ua.family} {ua.major}" if ua else "-"
        this = s.id == current.id
        action = (
            "<em>this device</em>"
            if this
            else f'<form method="post" action="/sessions/{s.id}/revoke">'
            f'<button id="revoke-{s.id}">Sign out</button></form>'
        )
        rows.append(
            f'<tr class="{"current" if this else "other"}" data-id="{s.id}">'
            f"<td>{html.escape(device)}</td><td>{html.escape(system)}</td>"
            f"<td>{html.escape(browser)}</td>"
            f"<td>{s.created_at:%Y-%m-%d %H:%M:%S}</td>"
            f"<td>{s.last_active_at:%Y-%m-%d %H:%M:%S}</td><td>{action}</td></tr>"
        )
    return (
        '<table id="sessions"><tr><th>Device</th><th>OS</th><th>Browser</th>'
        "<th>Created</th><th>Last active</th><th></th></tr>" + "".join(rows) + "</table>"
    )


def create_app(
    store: SessionStore | None = None, *, redis_url: str | None = None, secure: bool = True
) -> FastAPI:
    """The app, on `store` (or a store it opens on `redis_url` and closes)."""
    holder: dict[str, SessionStore] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if store is None:
            assert redis_url, "give a store or a redis_url"
            holder["store"] = SessionStore.from_url(redis_url)
        try:
            yield
        finally:
            if store is None:
                await holder["store"].aclose()

    app = FastAPI(lifespan=lifespan)
    active = _LazyStore(store, holder)
    app.add_middleware(SessionMiddleware, store=active, secure=secure)  # type: ignore[arg-type]
    app.router.routes.extend(altogic_routes())

    @app.get("/", response_class=HTMLResponse)
    async def home(request: Request) -> str:
        session = get_session(request)
        if session is None:
            body = """<form id="signin" method="post" action="/signin">
              <label>User <input name="user" id="user" required></label>
              <label><input type="checkbox" name="admin" id="admin"> admin</label>
              <button id="signin-button">Sign in</button></form>"""
            return PAGE.format(body=body)
        sessions = await active.list(session.user_id)
        groups = ", ".join(session.access_groups) or "none"
        body = (
            f'<p id="whoami">Signed in as <b>{html.escape(session.user_id)}</b> '
            f'(groups: <span id="groups">{html.escape(groups)}</span>)</p>'
            f"<h2>My sessions</h2>{_sessions_table(sessions, session)}"
            '<p><form method="post" action="/signout-others">'
            '<button id="signout-others">Sign out everywhere else</button></form> '
            '<form method="post" action="/signout">'
            '<button id="signout">Sign out</button></form>'
            ' <a href="/editor" id="editor-link">Editor area</a></p>'
        )
        if "admin" in session.access_groups:
            body += """<h2>Admin</h2><form method="post" action="/admin/promote">
              <input name="user" id="promote-user"> <button id="promote">Make editor</button>
              </form> <form method="post" action="/admin/demote">
              <input name="user" id="demote-user">
              <button id="demote">Remove editor</button></form>"""
        return PAGE.format(body=body)

    @app.post("/signin")
    async def do_sign_in(request: Request) -> Response:
        form = await _form(request)
        user = form.get("user", "").strip()
        if not user:
            return RedirectResponse("/", status_code=303)
        await sign_in(request, user, ["admin"] if form.get("admin") else [])
        return RedirectResponse("/", status_code=303)

    @app.post("/signout")
    async def do_sign_out(request: Request) -> Response:
        await sign_out(request)
        return RedirectResponse("/", status_code=303)

    @app.post("/signout-others")
    async def do_sign_out_others(request: Request) -> Response:
        await sign_out_everywhere_else(request)
        return RedirectResponse("/", status_code=303)

    @app.post("/sessions/{session_id}/revoke")
    async def revoke(request: Request, session_id: str) -> Response:
        session = get_session(request)
        if session is not None:
            await active.delete_by_id(session.user_id, session_id)
        return RedirectResponse("/", status_code=303)

    @app.post("/admin/promote")
    async def promote(
        request: Request,
        admin: Session = Depends(require_groups("admin")),  # noqa: B008
    ) -> Response:
        user = (await _form(request)).get("user", "").strip()
        if user:
            await active.add_groups(user, "editor")
        return RedirectResponse("/", status_code=303)

    @app.post("/admin/demote")
    async def demote(
        request: Request,
        admin: Session = Depends(require_groups("admin")),  # noqa: B008
    ) -> Response:
        user = (await _form(request)).get("user", "").strip()
        if user:
            await active.remove_groups(user, "editor")
        return RedirectResponse("/", status_code=303)

    @app.get("/editor")
    async def editor(session: Session = Depends(require_groups("editor"))) -> Any:  # noqa: B008
        return JSONResponse({"editor": session.user_id})

    return app


class _LazyStore:
    """The store given, or the one the lifespan opens (the middleware is built
    before the app starts)."""

    def __init__(self, store: SessionStore | None, holder: dict[str, SessionStore]) -> None:
        self._store = store
        self._holder = holder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store or self._holder["store"], name)
