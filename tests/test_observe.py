"""Metrics and tracing: they count what happened, and cost nothing (not even
an import) when they are off."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, generate_latest

from sessionkit import BackendUnavailable, Session, SessionStore, ValidationError
from sessionkit.metrics import PrometheusMetrics
from sessionkit.server import free_port
from tests.conftest import StoreFactory


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_metrics_count_what_happened(make_store: StoreFactory) -> None:
    registry = CollectorRegistry()
    store = make_store(metrics=PrometheusMetrics(registry), max_sessions_per_user=2)
    made = [await store.create("alice", ["g"]) for _ in range(3)]  # the third evicts one
    await store.create("bob")
    assert made[2].token and made[1].token
    assert await store.get("alice", made[2].token)
    await store.resolve(made[1].token)
    await store.list("alice")
    await store.add_groups("alice", "h")
    await store.remove_groups("alice", "h")
    assert await store.delete("alice", made[2].token)
    assert not await store.delete("alice", made[2].token)  # nothing deleted
    assert await store.delete_all("alice") == 1
    for bad in ("", "x" * 2000):
        with pytest.raises(ValidationError):
            await store.create(bad)

    calls = {
        "create": 6, "get": 1, "resolve": 1, "list": 1, "add_groups": 1,
        "remove_groups": 1, "delete": 2, "delete_all": 1,
    }  # fmt: skip
    for op, n in calls.items():
        assert value(registry, "sessionkit_operations_total", operation=op) == n, op
        assert value(registry, "sessionkit_operation_seconds_count", operation=op) == n, op
    assert value(registry, "sessionkit_operation_seconds_sum", operation="create") > 0
    assert (
        value(registry, "sessionkit_errors_total", operation="create", code="validation_error") == 2
    )
    assert value(registry, "sessionkit_sessions_created_total") == 4
    assert value(registry, "sessionkit_sessions_deleted_total", reason="evicted") == 1
    assert value(registry, "sessionkit_sessions_deleted_total", reason="deleted") == 1
    assert value(registry, "sessionkit_sessions_deleted_total", reason="all_deleted") == 1
    text = generate_latest(registry).decode()
    assert "alice" not in text and (made[0].token or "") not in text


async def test_metrics_count_errors_by_code_when_the_server_is_gone() -> None:
    registry = CollectorRegistry()
    store = SessionStore.from_url(
        f"redis://127.0.0.1:{free_port()}", metrics=PrometheusMetrics(registry), retries=0
    )
    async with store:
        with pytest.raises(BackendUnavailable):
            await store.list("alice")
    assert (
        value(registry, "sessionkit_errors_total", operation="list", code="backend_unavailable")
        == 1
    )


async def test_stores_share_one_set_of_metrics(make_store: StoreFactory) -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    await asyncio.gather(*(make_store(metrics=metrics).create(f"u{i}") for i in range(20)))
    assert value(registry, "sessionkit_sessions_created_total") == 20


async def test_metrics_true_uses_the_global_registry(make_store: StoreFactory) -> None:
    from prometheus_client import REGISTRY

    before = value(REGISTRY, "sessionkit_sessions_created_total")
    await make_store(metrics=True).create("carol")
    await make_store(metrics=True).create("carol")  # a second store: no duplicate metrics
    assert value(REGISTRY, "sessionkit_sessions_created_total") == before + 2
    assert make_store(metrics=True).metrics is PrometheusMetrics.default()


@pytest.mark.parametrize(
    ("options", "parameter"),
    [({"metrics": "yes"}, "metrics"), ({"tracing": 3}, "tracing")],
)
async def test_bad_observer_options_are_refused(
    make_store: StoreFactory, options: dict[str, object], parameter: str
) -> None:
    with pytest.raises(ValidationError) as err:
        make_store(**options)
    assert err.value.details == {"parameter": parameter}


async def test_each_operation_is_a_span(make_store: StoreFactory) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    store = make_store(tracing=provider)
    s = await store.create("dave", ["g"])
    assert s.token
    await store.resolve(s.token)
    with pytest.raises(ValidationError):
        await store.add_groups("dave", [""])
    spans = exporter.get_finished_spans()
    assert [sp.name for sp in spans] == [
        "sessionkit.create",
        "sessionkit.resolve",
        "sessionkit.add_groups",
    ]
    assert spans[0].attributes is not None
    assert spans[0].attributes["db.system.name"] == "redis"
    assert spans[0].status.status_code is not StatusCode.ERROR
    failed = spans[2]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["error.type"] == "validation_error"
    recorded = repr([(sp.attributes, sp.events, sp.status.description) for sp in spans])
    assert s.token not in recorded and "dave" not in recorded
    provider.shutdown()


_BLOCKER = """
import sys

class Blocker:
    # Refuses prometheus_client and opentelemetry, and notes every sessionkit
    # module that asked for them (redis-py looks for opentelemetry itself).
    asked = []

    def find_spec(self, name, path=None, target=None):
        if not name.startswith(("prometheus_client", "opentelemetry")):
            return None
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_globals.get("__name__", "").startswith("sessionkit"):
                self.asked.append((frame.f_globals["__name__"], name))
                break
            frame = frame.f_back
        raise ModuleNotFoundError(name)

sys.meta_path.insert(0, Blocker())
"""


def _without_observability(code: str) -> str:
    """What `code` prints, run in a fresh interpreter where prometheus_client
    and opentelemetry cannot be imported (and asking for them is noted)."""
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _BLOCKER + code],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def test_nothing_is_imported_when_metrics_and_tracing_are_off(server_url: str) -> None:
    out = _without_observability(
        "import asyncio, redis.asyncio as r\n"
        "import sessionkit, sessionkit.nodes, sessionkit.flow, sessionkit.events\n"
        "import sessionkit.web, sessionkit.cli\n"
        "async def main():\n"
        f"    async with sessionkit.SessionStore.from_url({server_url!r}) as s:\n"
        "        made = await s.create('alice')\n"
        "        assert await s.resolve(made.token)\n"
        "asyncio.run(main())\n"
        "print(Blocker.asked)\n"
    )
    assert out.strip() == "[]"


def test_asking_for_metrics_without_the_package_says_what_to_install() -> None:
    out = _without_observability(
        "import redis.asyncio as r, sessionkit\n"
        "for option in ('metrics', 'tracing'):\n"
        "    try:\n"
        "        sessionkit.SessionStore(r.Redis(), **{option: True})\n"
        "    except sessionkit.ValidationError as exc:\n"
        "        print(exc.message)\n"
    )
    assert out.splitlines() == [
        "metrics needs prometheus-client: pip install 'sessionkit[metrics]'",
        "tracing needs opentelemetry-api: pip install 'sessionkit[otel]'",
    ]


def test_the_store_s_operations_are_coroutine_functions_to_whoever_asks() -> None:
    # Unobserved, an operation returns its method's coroutine (one frame,
    # not two); frameworks that dispatch on the function still see async.
    for name in ("create", "get", "resolve", "list", "delete", "delete_all", "add_groups"):
        method = getattr(SessionStore, name)
        if sys.version_info >= (3, 12):
            assert inspect.iscoroutinefunction(method), name
        else:
            assert asyncio.iscoroutinefunction(method), name


async def test_an_unobserved_store_calls_each_operation_without_the_reporting_layer(
    make_store: StoreFactory,
) -> None:
    """With nothing to report to, a store's operations are their bodies
    (the layer that reports a call would only forward it); an observed
    store's go through it. Either way they are coroutine functions."""
    from sessionkit.store import _OBSERVED

    plain, observed = make_store(), make_store(metrics=PrometheusMetrics(CollectorRegistry()))
    assert {"create", "get", "resolve", "list", "delete", "add_groups"} <= set(_OBSERVED)
    for name, (wrapper, body) in _OBSERVED.items():
        assert getattr(plain, name).__func__ is body, name
        assert getattr(observed, name).__func__ is wrapper, name
        assert inspect.iscoroutinefunction(getattr(plain, name)), name
    made = await plain.create("dora")
    assert made.token is not None and (await plain.resolve(made.token)) == made


async def test_a_subclass_s_own_operation_stays_its_own(server_url: str, prefix: str) -> None:
    """A subclass that overrides an operation keeps its override on a store
    with no observer; the operations it does not override are the store's."""

    resolved: list[str] = []

    class Audited(SessionStore):
        async def resolve(self, token: str) -> Session | None:
            resolved.append(token[:4])
            return await super().resolve(token)

    async with Audited.from_url(server_url, prefix=prefix) as store:
        made = await store.create("erin")
        assert made.token is not None
        assert await store.resolve(made.token) == made
        assert resolved == [made.token[:4]]
