"""Sign a user in on a few devices on the server at $REDIS_URL, printing the
new sessions' public ids (never their tokens): something for the operator CLI
to look at. Usage: python examples/sign_in.py USER [DEVICES]"""

from __future__ import annotations

import asyncio
import os
import sys

from sessionkit import SessionStore

DEVICES = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "curl/8.5.0",
]


async def main(user: str, devices: int) -> None:
    async with SessionStore.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379")) as s:
        for i in range(devices):
            session = await s.create(user, "member", user_agent=DEVICES[i % len(DEVICES)])
            print(session.id)


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 3:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 2))
