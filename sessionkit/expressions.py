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

from sessionkit.defaults import (
    MAX_COMPREHENSION_DEPTH,
    MAX_COMPREHENSION_STEPS,
    MAX_EXPRESSION_BYTES,
)
from sessionkit.errors import ExpressionError, SessionKitError


@dataclass(frozen=True, slots=True)
class Literal:
    """A parameter value used as is (a plain `str` would be read as CEL)."""

    value: Any


def literal(value: Any) -> Literal:
    """Mark `value` as a literal parameter, e.g. ``literal("admin")``."""
    return Literal(value)


_MACROS = frozenset({"map", "filter", "all", "exists", "exists_one"})


def _comprehensions(source: str) -> tuple[int, int, int]:
    """How deep CEL's comprehension macros nest in `source`, how many there
    are, and how many elements a list written in it can have at most (its
    commas + 1), string literals skipped: what bounds an expression's cost,
    with the inputs' sizes, is these, not its length."""
    open_calls: list[bool] = []  # per open parenthesis: is it a macro's call
    deepest = depth = macros = commas = 0
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c in "'\"":
            quote = source[i : i + 3] if source[i : i + 3] in ("'''", '"""') else c
            i += len(quote)
            while i < n and not source.startswith(quote, i):
                i += 2 if source[i] == "\\" else 1
            i += len(quote)
            continue
        if c == "(":
            end = i
            while end > 0 and source[end - 1].isspace():
                end -= 1
            start = end
            while start > 0 and (source[start - 1].isalnum() or source[start - 1] == "_"):
                start -= 1
            dot = start - 1
            while dot >= 0 and source[dot].isspace():
                dot -= 1
            macro = source[start:end] in _MACROS and dot >= 0 and source[dot] == "."
            open_calls.append(macro)
            depth += macro
            macros += macro
            deepest = max(deepest, depth)
        elif c == ")" and open_calls:
            depth -= open_calls.pop()
        elif c == ",":
            commas += 1
        i += 1
    return deepest, macros, commas + 1


def _largest(value: Any, enough: int) -> int:
    """The length of the largest list or map in `value`, nested ones
    included (a walk that stops once one has `enough`)."""
    largest = 0
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, Mapping):
            largest = max(largest, len(item))
            todo.extend(item.values())
        elif isinstance(item, list | tuple):
            largest = max(largest, len(item))
            todo.extend(item)
        if largest >= enough:
            break
    return largest


def _steps(depth: int, macros: int, n: int) -> int:
    return int(macros * n ** (depth + 1))


class Parameter:
    """One compiled parameter of a node."""

    __slots__ = ("_call", "_cost", "_program", "_value", "name", "source")

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.source: str | None = None
        self._program: Any = None
        self._call: Callable[[Mapping[str, Any]], Any] | None = None
        self._value: Any = None
        self._cost: tuple[int, int, int] = (0, 0, 0)  # depth, macros, longest literal
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
            self._cost = _comprehensions(value)
            depth = self._cost[0]
            if depth > MAX_COMPREHENSION_DEPTH:
                raise ExpressionError(
                    f"parameter {name}: comprehensions (map, filter, all, exists, exists_one) "
                    f"are nested {depth} deep; at most {MAX_COMPREHENSION_DEPTH} are allowed",
                    details={"parameter": name, "depth": depth},
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

    def _check_cost(self, inputs: Mapping[str, Any]) -> None:
        """Refuse an evaluation whose comprehensions could iterate so much
        that it would stall every other task (see `MAX_COMPREHENSION_STEPS`)."""
        depth, macros, literal = self._cost
        # The largest n still within budget: no need to walk past it.
        enough = int((MAX_COMPREHENSION_STEPS / macros) ** (1 / (depth + 1))) + 1
        n = max(literal, _largest(dict(inputs), enough))
        steps = _steps(depth, macros, n)
        if steps > MAX_COMPREHENSION_STEPS:
            raise ExpressionError(
                f"parameter {self.name}: its comprehensions (nested {depth} deep, {macros} "
                f"in all) could iterate lists of up to {n} elements here, about {steps:,} "
                f"steps; at most {MAX_COMPREHENSION_STEPS:,} are allowed",
                details={
                    "parameter": self.name,
                    "elements": n,
                    "depth": depth,
                    "steps": steps,
                    "maximum": MAX_COMPREHENSION_STEPS,
                },
            )

    async def evaluate(self, inputs: Mapping[str, Any]) -> Any:
        """The parameter's value for these inputs."""
        if self._program is not None:
            if self._cost[0]:
                self._check_cost(inputs)
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


__all__ = ["Literal", "Parameter", "literal"]
