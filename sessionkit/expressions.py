"""Node parameters: CEL expressions evaluated against a node's inputs.

A parameter is one of:

* a `str`: a CEL (Common Expression Language) expression, compiled once when
  the node is built, evaluated with each input link point visible by its name
  (``inputObject.userId``, ``'admin'``, ``["a", "b"]``, ``x > 1 ? 'a' : 'b'``);
* a callable taking the inputs mapping (sync or async), for logic CEL cannot say;
* `literal(value)` or any other value: used as is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cel

from sessionkit.defaults import MAX_EXPRESSION_BYTES
from sessionkit.errors import SessionKitError, ValidationError


@dataclass(frozen=True, slots=True)
class Literal:
    """A parameter value used as is (a plain `str` would be read as CEL)."""

    value: Any


def literal(value: Any) -> Literal:
    """Mark `value` as a literal parameter, e.g. ``literal("admin")``."""
    return Literal(value)


class ExpressionError(ValidationError):
    """A parameter expression does not compile, or fails on the given inputs."""

    code = "expression_error"


class Parameter:
    """One compiled parameter of a node."""

    __slots__ = ("_call", "_program", "_value", "name", "source")

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.source: str | None = None
        self._program: Any = None
        self._call: Callable[[Mapping[str, Any]], Any] | None = None
        self._value: Any = None
        if isinstance(value, Literal):
            self._value = value.value
        elif isinstance(value, str):
            self.source = value
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > MAX_EXPRESSION_BYTES:
                raise ExpressionError(
                    f"parameter {name}: the expression is {size} bytes long; at most "
                    f"{MAX_EXPRESSION_BYTES} are allowed",
                    details={"parameter": name, "bytes": size},
                )
            try:
                self._program = cel.compile(value)
            except Exception as exc:
                raise ExpressionError(
                    f"parameter {name}: {value!r} is not a valid expression: "
                    f"{str(exc).splitlines()[0]}",
                    details={"parameter": name, "expression": value},
                ) from exc
        elif callable(value):
            self._call = value
        else:
            self._value = value

    async def evaluate(self, inputs: Mapping[str, Any]) -> Any:
        """The parameter's value for these inputs."""
        if self._program is not None:
            try:
                return self._program.execute(dict(inputs))
            except Exception as exc:
                raise ExpressionError(
                    f"parameter {self.name}: evaluating {self.source!r} failed: "
                    f"{type(exc).__name__}: {exc}",
                    details={"parameter": self.name, "expression": self.source},
                ) from exc
        if self._call is not None:
            try:
                result = self._call(inputs)
                if inspect.isawaitable(result):
                    result = await result
            except SessionKitError:
                raise
            except Exception as exc:
                raise ExpressionError(
                    f"parameter {self.name}: the callable failed: {type(exc).__name__}: {exc}",
                    details={"parameter": self.name},
                ) from exc
            return result
        return self._value
