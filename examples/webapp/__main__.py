"""``python -m examples.webapp``: the example app on a private embedded server
(or ``--redis-url``), served by uvicorn on http://127.0.0.1:8000."""

from __future__ import annotations

import argparse
import contextlib

import uvicorn

from examples.webapp.app import create_app
from sessionkit.server import EmbeddedServer


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m examples.webapp")
    p.add_argument("--redis-url", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(EmbeddedServer()).url
        # Plain http on loopback: cookies without the Secure flag.
        app = create_app(redis_url=url, secure=False)
        print(f"sessions on {url}; open http://{args.host}:{args.port}/", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
