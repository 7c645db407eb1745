"""Prometheus metrics for session stores (optional: ``pip install
'sessionkit[metrics]'``). This module is the only one that imports
`prometheus_client`, and only a store given ``metrics=`` imports it.

Metrics (``sessionkit`` namespace by default):

* ``sessionkit_operations_total{operation}``: calls, successful or not
* ``sessionkit_errors_total{operation,code}``: failed calls, by error code
  (``validation_error``, ``backend_unavailable``, ``backend_timeout``, ...)
* ``sessionkit_operation_seconds{operation}``: latency histogram
* ``sessionkit_sessions_created_total``
* ``sessionkit_sessions_deleted_total{reason}``: ``deleted`` (one by one),
  ``all_deleted`` (sign out everywhere), ``evicted`` (max sessions per user)
* ``sessionkit_near_cache_lookups_total{result}``: ``hit`` or ``miss``, of
  stores with a near cache (while its channel is down, reads do not look)
* ``sessionkit_near_cache_invalidations_total``: the server's announcements
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import ClassVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

#: Latency buckets, seconds: a session operation is one round trip, so the
#: interesting range is tens of microseconds to a few hundred milliseconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class PrometheusMetrics:
    """One set of metrics in one registry; stores given the same instance
    add up. ``metrics=True`` on a store uses `PrometheusMetrics.default()`,
    the set in prometheus-client's global registry."""

    _defaults: ClassVar[dict[int, PrometheusMetrics]] = {}
    _lock: ClassVar = threading.Lock()

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "sessionkit",
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        registry = REGISTRY if registry is None else registry
        self.registry = registry
        self.operations = Counter(
            "operations",
            "Session store calls, successful or not.",
            ["operation"],
            namespace=namespace,
            registry=registry,
        )
        self.errors = Counter(
            "errors",
            "Session store calls that failed, by error code.",
            ["operation", "code"],
            namespace=namespace,
            registry=registry,
        )
        self.latency = Histogram(
            "operation_seconds",
            "Session store call latency, seconds.",
            ["operation"],
            namespace=namespace,
            registry=registry,
            buckets=tuple(buckets),
        )
        self.created = Counter(
            "sessions_created", "Sessions created.", namespace=namespace, registry=registry
        )
        self.deleted = Counter(
            "sessions_deleted",
            "Sessions deleted, by reason: deleted, all_deleted, evicted.",
            ["reason"],
            namespace=namespace,
            registry=registry,
        )

        self.near_lookups = Counter(
            "near_cache_lookups",
            "Near cache lookups, by result: hit, miss.",
            ["result"],
            namespace=namespace,
            registry=registry,
        )
        self._near_hit = self.near_lookups.labels("hit")
        self._near_miss = self.near_lookups.labels("miss")
        self.near_invalidations = Counter(
            "near_cache_invalidations",
            "Announcements of changed keys the near cache received.",
            namespace=namespace,
            registry=registry,
        )

    @classmethod
    def default(cls) -> PrometheusMetrics:
        """The metrics in prometheus-client's global registry (made once)."""
        with cls._lock:
            if id(REGISTRY) not in cls._defaults:
                cls._defaults[id(REGISTRY)] = cls()
            return cls._defaults[id(REGISTRY)]

    def observe(self, operation: str, seconds: float, code: str | None) -> None:
        """One call of `operation`: its latency and, if it failed, its error code."""
        self.operations.labels(operation).inc()
        self.latency.labels(operation).observe(seconds)
        if code is not None:
            self.errors.labels(operation, code).inc()

    def sessions_created(self, n: int = 1) -> None:
        self.created.inc(n)

    def sessions_deleted(self, reason: str, n: int) -> None:
        if n > 0:
            self.deleted.labels(reason).inc(n)

    def near_cache_lookup(self, hit: bool) -> None:
        (self._near_hit if hit else self._near_miss).inc()

    def near_cache_invalidated(self) -> None:
        self.near_invalidations.inc()


__all__ = ["LATENCY_BUCKETS", "PrometheusMetrics"]
