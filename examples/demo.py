"""A short tour of the engine on a private embedded server: create, list,
change groups, resolve and delete sessions, printing what happens."""

from __future__ import annotations

import asyncio

from sessionkit import SessionStore
from sessionkit.server import EmbeddedServer

LAPTOP = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
PHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)


async def main() -> None:
    async with EmbeddedServer() as server, SessionStore.from_url(server.url) as store:
        print(f"embedded server at {server.url}")
        laptop = await store.create("alice", ["member"], user_agent=LAPTOP)
        phone = await store.create("alice", "member", user_agent=PHONE, data={"theme": "dark"})
        print(f"created 2 sessions for alice: {laptop.id} (laptop), {phone.id} (phone)")
        for s in await store.list("alice"):
            ua = s.user_agent
            device = f"{ua.family} on {ua.os.family}" if ua else "unknown device"
            print(f"  {s.id}  {device:<28} groups={s.access_groups}")
        print(f"add 'admin' to every session: {await store.add_groups('alice', 'admin')} changed")
        resolved = await store.resolve(phone.token or "")
        print(
            f"phone's token resolves to {resolved.user_id if resolved else None}, "
            f"groups={resolved.access_groups if resolved else None}"
        )
        print(f"remove 'admin': {await store.remove_groups('alice', 'admin')} changed")
        print(
            f"sign out everywhere but the laptop: "
            f"{await store.delete_all('alice', except_token=laptop.token)} deleted"
        )
        print(f"phone's token now resolves to: {await store.resolve(phone.token or '')}")
        print(f"delete the laptop session: {await store.delete('alice', laptop.token or '')}")
        print(f"alice has {len(await store.list('alice'))} sessions left")


if __name__ == "__main__":
    asyncio.run(main())
