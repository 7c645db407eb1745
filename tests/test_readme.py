"""The README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
RUNNABLE = [b for b in BLOCKS if "asyncio.run(main())" in b]
SHELL = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_runnable_examples() -> None:
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize("code", RUNNABLE, ids=lambda c: c.split("async def")[0][-40:].strip())
def test_readme_example_runs(code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()


@pytest.mark.server
async def test_readme_fastapi_example_works_as_written(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    (code,) = [b for b in BLOCKS if "FastAPI()" in b]
    assert len(code.strip().splitlines()) <= 22
    monkeypatch.setenv("REDIS_URL", server_url)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    app = namespace["app"]
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="https://t") as http:
        assert (await http.get("/me")).status_code == 401
        token = (await http.post("/login/zoe")).json()["token"]
        assert (await http.get("/me")).json() == {"user": "zoe", "groups": ["member"]}
        assert (await http.get("/admin")).status_code == 403
        await namespace["store"].add_groups("zoe", "admin")  # type: ignore[attr-defined]
        r = await http.get("/admin", headers={"Session": token})
        assert r.json() == {"hello": "zoe"}
    await namespace["store"].aclose()  # type: ignore[attr-defined]


@pytest.mark.server
def test_readme_cli_session_runs_as_written(tmp_path: Path) -> None:
    """The operator CLI block, run by bash as a reader would paste it."""
    (block,) = [b for b in SHELL if "sessionkit server" in b]
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.splitlines()
    ids = out[:3]  # examples/sign_in.py prints the three new sessions' ids
    listing = "\n".join(out[3:8])
    assert all(i in listing for i in ids) and "Firefox" in listing
    assert "changed 3 session(s) of alice" in out
    events = [line.split()[1] for line in out if line.startswith("20")]
    assert events == ["created", "created", "created", "groups_added"]
    assert '{"revoked": 3}' in out
    assert '"sessions": 0, "users": 0' in out[-1]
