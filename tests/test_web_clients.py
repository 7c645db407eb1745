"""The example app served by uvicorn on loopback, driven by real clients: a
headless Chromium (through Playwright) as two and three devices, and the real
`altogic` JavaScript client run by Node.js."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, async_playwright

from sessionkit import SessionStore
from sessionkit.server import free_port

pytestmark = pytest.mark.server

ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def web_url(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example app, as `python -m examples.webapp` runs it, on a free port."""
    folder = tmp_path_factory.mktemp("webapp")
    for attempt in range(5):
        # A port free when picked can be taken before the app binds it (by
        # another test's connection): the app then exits, and another port
        # is tried.
        log_path = folder / f"app{attempt}.log"
        proc, url = _serve(server_url, log_path)
        if proc is not None:
            break
        if "address already in use" not in log_path.read_text():
            raise RuntimeError(f"the example app did not start:\n{log_path.read_text()}")
    else:
        raise RuntimeError(f"no port the example app could bind:\n{log_path.read_text()}")
    yield url
    proc.terminate()
    proc.wait(10)


def _serve(server_url: str, log_path: Path) -> tuple[subprocess.Popen[bytes] | None, str]:
    """The example app started on a port free now, and its URL; None if it
    exited or did not answer within 30 s (its output is in `log_path`)."""
    port = free_port()
    app = [sys.executable, "-m", "examples.webapp", "--redis-url", server_url, "--port", str(port)]
    with log_path.open("wb") as log:  # the app writes to its own copy
        proc = subprocess.Popen(app, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/", timeout=1)
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(10)
                return None, url
            time.sleep(0.1)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        await b.close()


@pytest.fixture
async def store(server_url: str) -> AsyncIterator[SessionStore]:
    client = aioredis.Redis.from_url(server_url)
    yield SessionStore(client)  # the app's default prefix
    await client.aclose()


async def _sign_in(browser: Browser, url: str, user: str, admin: bool = False) -> Any:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(url + "/")
    await page.fill("#user", user)
    if admin:
        await page.check("#admin")
    await page.click("#signin-button")
    await page.wait_for_selector("#whoami")
    return context, page


async def test_browser_devices_cookies_sign_out_and_promotion(
    browser: Browser, web_url: str, store: SessionStore
) -> None:
    user = f"eve-{time.time_ns()}"
    boss, boss_page = await _sign_in(browser, web_url, f"boss-{time.time_ns()}", admin=True)
    laptop, laptop_page = await _sign_in(browser, web_url, user)
    phone, phone_page = await _sign_in(browser, web_url, user)

    # The cookie, as the browser sees it.
    (cookie,) = [c for c in await laptop.cookies() if c["name"] == "sessionkit"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
    assert cookie["secure"] is False  # the example runs on plain http
    assert 13.9 * 86400 < cookie["expires"] - time.time() <= 14 * 86400
    assert "sessionkit" not in await laptop_page.evaluate("document.cookie")

    # Two devices listed; this one marked.
    await laptop_page.reload()
    rows = laptop_page.locator("#sessions tr[data-id]")
    assert await rows.count() == 2
    assert await laptop_page.locator("#sessions tr.current").count() == 1
    assert "this device" in await laptop_page.locator("#sessions tr.current").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    await laptop_page.screenshot(path=str(ARTIFACTS / "sessions.png"), full_page=True)

    # Not an editor yet; the admin promotes; the very next request passes.
    r = await laptop_page.goto(web_url + "/editor")
    assert r is not None and r.status == 403
    assert json.loads(await r.text())["errors"][0]["code"] == "forbidden"
    await boss_page.fill("#promote-user", user)
    await boss_page.click("#promote")
    await boss_page.wait_for_selector("#whoami")
    r = await laptop_page.goto(web_url + "/editor")
    assert r is not None and r.status == 200 and json.loads(await r.text()) == {"editor": user}
    r = await phone_page.goto(web_url + "/editor")
    assert r is not None and r.status == 200

    # "Sign out everywhere else" on the laptop signs the phone out.
    await laptop_page.goto(web_url + "/")
    await laptop_page.click("#signout-others")
    await laptop_page.wait_for_selector("#whoami")
    assert await laptop_page.locator("#sessions tr[data-id]").count() == 1
    await phone_page.goto(web_url + "/")
    assert await phone_page.locator("#signin").count() == 1
    assert len(await store.list(user)) == 1

    # Signing out clears the cookie.
    await laptop_page.click("#signout")
    await laptop_page.wait_for_selector("#signin")
    assert not [c for c in await laptop.cookies() if c["name"] == "sessionkit"]
    assert await store.list(user) == []
    for context in (boss, laptop, phone):
        await context.close()


def test_the_altogic_javascript_client(web_url: str, server_url: str) -> None:
    user = f"altogic-{time.time_ns()}"
    with httpx.Client(base_url=web_url) as http:
        r = http.post("/signin", data={"user": user}, follow_redirects=False)
        token = r.cookies["sessionkit"]
    others = [httpx.post(web_url + "/signin", data={"user": user}) for _ in range(2)]
    assert all(o.status_code == 303 for o in others)
    spare = httpx.post(
        web_url + "/signin", data={"user": "spare-" + user}, follow_redirects=False
    ).cookies["sessionkit"]
    proc = subprocess.run(
        ["node", str(ROOT / "tests" / "js" / "altogic_client.mjs"), web_url, token, spare],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["listErrors"] is None
    assert out["listed"] == 3 and out["currentRecognised"] == 1
    assert out["otherHandle"] and out["otherHandle"] != token and len(out["otherHandle"]) == 24
    assert out["signOutOther"] is None and out["afterSignOut"] == 2
    assert out["signOutAllExcept"] is None and out["afterAllExcept"] == [True]
    assert out["signOutAll"] is None
    assert out["afterAll"] == ["invalid_session_token"]
    # The listing has the client's Session shape: versions are strings, the
    # device has versions too, and no server-side data reaches the browser.
    platform = [
        "accessGroupKeys", "creationDtm", "expiresAt", "id", "lastActiveAt", "token",
        "userAgent", "userId",
    ]  # fmt: skip
    assert out["fields"] == [platform] * 3
    versions = {"major": "string", "minor": "string", "patch": "string"}
    assert out["userAgentTypes"] == {
        "family": "string", **versions,
        "device": {"family": "string", **versions},
        "os": {"family": "string", **versions},
    }  # fmt: skip
    # signOut(""): the client means its own session, and so does the server.
    assert out["emptySignOut"] is None
    assert out["afterEmpty"] == ["invalid_session_token"]
