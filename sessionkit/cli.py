"""The operator CLI: ``sessionkit sessions|groups|events|stats|server``.

Exit codes: 0 done, 2 bad usage, 3 bad input (e.g. an empty user id),
4 the server cannot be reached, 1 any other error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from sessionkit._model import Session
from sessionkit.defaults import PREFIX
from sessionkit.errors import BackendUnavailable, SessionKitError, ValidationError
from sessionkit.events import Event, EventConsumer, tail
from sessionkit.store import SessionStore

EXIT_INPUT = 3
EXIT_UNREACHABLE = 4


def _global_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """--redis-url, --prefix and --json. Every subcommand takes them too (so
    they may come last); there they default to nothing, so that one given
    before the subcommand stands."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--redis-url",
        default=default(os.environ.get("REDIS_URL", "redis://localhost:6379")),
        help="server URL (redis://, rediss://, redis+cluster://); default $REDIS_URL",
    )
    p.add_argument("--prefix", default=default(PREFIX), help=f"key prefix (default {PREFIX})")
    p.add_argument(
        "--json", action="store_true", default=default(False), help="JSON output for scripts"
    )


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser: it takes the global options as well."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _global_options(self, defaults=False)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sessionkit", description="Operate sessionkit sessions.")
    _global_options(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sessions = sub.add_parser("sessions", help="list or revoke a user's sessions")
    ssub = sessions.add_subparsers(dest="action", required=True)
    listing = ssub.add_parser("list", help="a user's live sessions, oldest first")
    listing.add_argument("user")
    revoke = ssub.add_parser("revoke", help="end a user's sessions")
    revoke.add_argument("user")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="the session with this public id")
    which.add_argument("--all", action="store_true", help="every session")
    which.add_argument("--all-except", metavar="ID", help="every session but this one")

    groups = sub.add_parser("groups", help="add or remove access groups on all sessions")
    groups.add_argument("action", choices=["add", "remove"])
    groups.add_argument("user")
    groups.add_argument("group", nargs="+")

    events = sub.add_parser("events", help="follow session events")
    esub = events.add_subparsers(dest="action", required=True)
    follow = esub.add_parser(
        "tail",
        help="print events as they happen (one JSON object per line with --json)",
        description="Print session events as they happen, from now (or --since). With "
        "--group, read as a consumer of that consumer group: start where the group left "
        "off and acknowledge each event once printed.",
    )
    follow.add_argument("--count", type=_positive, help="stop after this many events")
    where = follow.add_mutually_exclusive_group()
    where.add_argument("--since", type=_instant, help="start at this ISO 8601 time (default: now)")
    where.add_argument(
        "--group", help="read as a consumer of this consumer group (made at now if new)"
    )
    follow.add_argument("--consumer", default="sessionkit-cli", help="consumer name (with --group)")

    status = esub.add_parser(
        "status",
        help="a consumer group's pending and undelivered events, and streams where it lost some",
    )
    status.add_argument("--group", required=True, help="the consumer group")

    sub.add_parser("stats", help="sessions, users, events and memory (SCAN, never KEYS)")
    sub.add_parser("server", help="run a private embedded server in the foreground")
    return p


def _glob_escape(text: str) -> str:
    """`text` matched literally by a SCAN pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def _printable(text: str) -> str:
    """Text for a terminal: control characters (which could move the cursor
    or rewrite what is shown) escaped, as Python writes them."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def _safe_url(url: str) -> str:
    """The URL with its password masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return n


def _instant(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time such as 2026-11-28T12:00:00Z, got {text!r}"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _event_line(e: Event, as_json: bool) -> str:
    if as_json:
        data = msgspec.structs.asdict(e)
        data["at"] = e.at.isoformat(timespec="milliseconds")
        return json.dumps(data, ensure_ascii=False)
    at = e.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    line = f"{at}  {e.type:<14}  {json.dumps(e.user_id, ensure_ascii=False)}"
    line += f"  sessions={','.join(e.session_ids)}"
    if e.groups:
        line += f"  groups={json.dumps(list(e.groups), ensure_ascii=False)}"
    return _printable(line)


async def _tail(args: argparse.Namespace) -> None:
    """Print events until --count of them, or until stopped."""
    printed = 0
    async with SessionStore.from_url(args.redis_url, prefix=args.prefix) as store:
        if args.group:
            consumer = EventConsumer(store, group=args.group, consumer=args.consumer)
            while args.count is None or printed < args.count:
                batch = await consumer.read()
                batch = batch[: None if args.count is None else args.count - printed]
                for event in batch:
                    print(_event_line(event, args.json), flush=True)
                await consumer.ack(*batch)
                printed += len(batch)
            return
        async for event in tail(store, since=args.since):
            print(_event_line(event, args.json), flush=True)
            printed += 1
            if args.count is not None and printed >= args.count:
                return


def _row(s: Session) -> dict[str, Any]:
    ua = s.user_agent
    return {
        "id": s.id,
        "created": s.created_at.isoformat(timespec="seconds"),
        "last_active": s.last_active_at.isoformat(timespec="seconds"),
        "expires": s.expires_at.isoformat(timespec="seconds"),
        "groups": ",".join(s.access_groups),
        "device": f"{ua.family} / {ua.os.family} / {ua.device.family}" if ua else "-",
    }


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    cols = list(rows[0])
    cells = [{c: _printable(str(r[c])) for c in cols} for r in rows]
    widths = {c: max(len(c), *(len(r[c]) for r in cells)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in cols) for r in cells]
    return "\n".join(lines)


async def _stats(store: SessionStore) -> dict[str, Any]:
    sessions = users = 0
    streams: list[str] = []
    pattern = f"{_glob_escape(store.prefix)}:{{*"
    async for key in store.client.scan_iter(match=pattern, count=1000):
        text = key.decode() if isinstance(key, bytes) else key
        kind = text.split("}:", 1)[-1]
        sessions += kind.startswith("s:")
        users += kind.startswith("u:")
        if kind == "events":
            streams.append(text)
    events = 0
    if streams:
        async with store.client.pipeline(transaction=False) as pipe:
            for name in streams:
                pipe.xlen(name)
            events = sum(await pipe.execute())
    info = await store.client.info("memory")
    if isinstance(next(iter(info.values()), None), dict):  # a cluster: one entry per node
        used = sum(int(v["used_memory"]) for v in info.values())
    else:
        used = int(info["used_memory"])
    return {
        "sessions": sessions,
        "users": users,
        "events": events,
        "event_streams": len(streams),
        "used_memory_bytes": used,
    }


async def _run(args: argparse.Namespace) -> tuple[Any, str]:
    """The command's result, as data and as text for people."""
    async with SessionStore.from_url(args.redis_url, prefix=args.prefix) as store:
        if args.command == "events":  # status; tail streams its output (see _tail)
            st = await EventConsumer(store, group=args.group, consumer="sessionkit-cli").status()
            data = msgspec.structs.asdict(st)
            undelivered = "unknown" if st.undelivered is None else st.undelivered
            text = f"group {st.group}: {st.pending} pending, {undelivered} undelivered"
            if st.lost_streams:
                lost = "some" if st.lost is None else st.lost
                text += f"; {lost} lost to the streams' cap, in {len(st.lost_streams)} stream(s):"
                text += "".join(f"\n  {name}" for name in st.lost_streams)
            return data, text
        if args.command == "sessions" and args.action == "list":
            rows = [_row(s) for s in await store.list(args.user)]
            return rows, _table(rows)
        if args.command == "sessions":
            if args.id:
                n = int(await store.delete_by_id(args.user, args.id))
            elif args.all:
                n = await store.delete_all(args.user)
            else:
                n = await store.delete_all(args.user, except_id=args.all_except)
            return {"revoked": n}, f"revoked {n} session(s) of {args.user}"
        if args.command == "groups":
            call = store.add_groups if args.action == "add" else store.remove_groups
            n = await call(args.user, args.group)
            return {"changed": n}, f"changed {n} session(s) of {args.user}"
        stats = await _stats(store)
        text = (
            f"{stats['sessions']} sessions, {stats['users']} users, {stats['events']} events "
            f"in {stats['event_streams']} streams, "
            f"{stats['used_memory_bytes'] / 2**20:.1f} MiB server memory"
        )
        return stats, text


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops a command that runs until stopped as Ctrl-C does."""

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve() -> int:
    import threading

    from sessionkit.server import EmbeddedServer

    with EmbeddedServer() as server:
        print(server.url, flush=True)
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()
    return 0


def _error(args: argparse.Namespace, message: str) -> None:
    """An error for people: no password, no control characters."""
    password = urlsplit(args.redis_url).password
    if password:
        message = message.replace(password, "***")
    print(f"sessionkit: error: {_printable(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "server":
        return _serve()
    try:
        if args.command == "events" and args.action == "tail":
            with _stop_on_sigterm():
                asyncio.run(_tail(args))
            return 0
        data, text = asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except ValidationError as exc:
        _error(args, exc.message)
        return EXIT_INPUT
    except BackendUnavailable as exc:
        _error(args, f"cannot reach {_safe_url(args.redis_url)}: {exc.message}")
        return EXIT_UNREACHABLE
    except SessionKitError as exc:
        _error(args, exc.message)
        return 1
    print(json.dumps(data) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
