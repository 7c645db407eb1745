"""What a store reports about its own calls: Prometheus metrics
(`sessionkit.metrics`) and OpenTelemetry spans, each optional. Neither
library is imported unless a store asks for it."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from sessionkit.errors import SessionKitError, ValidationError

if TYPE_CHECKING:
    from sessionkit.metrics import PrometheusMetrics

T = TypeVar("T")


@runtime_checkable
class TracerProvider(Protocol):
    """What sessionkit needs of an OpenTelemetry tracer provider (the SDK's
    `TracerProvider`, or any object with the API's `get_tracer`)."""

    def get_tracer(self, instrumenting_module_name: str, /, *args: Any, **kwargs: Any) -> Any: ...


def _missing(extra: str, package: str, option: str) -> ValidationError:
    return ValidationError(
        f"{option} needs {package}: pip install 'sessionkit[{extra}]'",
        details={"parameter": option},
    )


class Observer:
    """Times each store call and reports it to the metrics and tracer it has."""

    def __init__(self, metrics: PrometheusMetrics | None, tracer: Any | None) -> None:
        self.metrics = metrics
        self.tracer = tracer

    @classmethod
    def make(cls, metrics: object, tracing: object) -> Observer | None:
        """From a store's `metrics` (False, True or a `PrometheusMetrics`) and
        `tracing` (False, True for the global tracer provider, or a
        provider) options; None when both are off."""
        m: PrometheusMetrics | None = None
        if metrics is not False and metrics is not None:
            try:
                from sessionkit.metrics import PrometheusMetrics
            except ImportError as exc:
                raise _missing("metrics", "prometheus-client", "metrics") from exc
            if metrics is True:
                m = PrometheusMetrics.default()
            elif isinstance(metrics, PrometheusMetrics):
                m = metrics
            else:
                raise ValidationError(
                    f"metrics must be True, False or a PrometheusMetrics, got {metrics!r}",
                    details={"parameter": "metrics"},
                )
        tracer = None
        if tracing is not False and tracing is not None:
            try:
                from opentelemetry import trace
            except ImportError as exc:
                raise _missing("otel", "opentelemetry-api", "tracing") from exc
            if tracing is True:
                tracer = trace.get_tracer("sessionkit")
            elif isinstance(tracing, TracerProvider):
                tracer = tracing.get_tracer("sessionkit")
            else:
                raise ValidationError(
                    f"tracing must be True, False or a TracerProvider, got {tracing!r}",
                    details={"parameter": "tracing"},
                )
        if m is None and tracer is None:
            return None
        return cls(m, tracer)

    async def call(self, operation: str, work: Awaitable[T]) -> T:
        """Await `work`, the store's `operation`, timed and traced."""
        if self.tracer is None:
            return await self._timed(operation, work)
        from opentelemetry.trace import SpanKind, Status, StatusCode

        with self.tracer.start_as_current_span(
            f"sessionkit.{operation}",
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": "redis", "sessionkit.operation": operation},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await self._timed(operation, work)
            except SessionKitError as exc:
                # The message, not the exception: its cause may name user data.
                span.set_attribute("error.type", exc.code)
                span.set_status(Status(StatusCode.ERROR, exc.message))
                raise

    async def _timed(self, operation: str, work: Awaitable[T]) -> T:
        start = time.perf_counter()
        code: str | None = None
        try:
            return await work
        except SessionKitError as exc:
            code = exc.code
            raise
        except Exception:
            code = "internal_error"
            raise
        except BaseException:
            code = "cancelled"
            raise
        finally:
            if self.metrics is not None:
                self.metrics.observe(operation, time.perf_counter() - start, code)
