"""The seven session nodes, with the platform's node contract.

A node has input link points (``inputObject``; a multi-input node may be given
more) and output link points. Running it activates exactly one output: its
success output (``notFound`` too, for the get node) or ``errors``.
Parameters are expressions over the inputs (see `sessionkit.expressions`).
Error management is ``"automatic"`` (the node raises, so the flow stops) or
``"manual"`` (the node activates ``errors`` with a list of error entries).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from sessionkit.errors import NodeError, SessionKitError, ValidationError
from sessionkit.expressions import Parameter
from sessionkit.store import SessionStore

ErrorManagement = Literal["automatic", "manual"]
INPUT = "inputObject"
ERRORS = "errors"


@dataclass(frozen=True, slots=True)
class NodeResult:
    """Which output link point a run activated, and with what value."""

    link: str
    value: Any


class Node:
    """Base of the session nodes; subclasses declare their contract and `_execute`."""

    type_name: ClassVar[str]
    outputs: ClassVar[tuple[str, ...]]
    parameters: ClassVar[dict[str, bool]]  # name -> required
    multi_input: ClassVar[bool] = True

    def __init__(
        self,
        store: SessionStore,
        *,
        error_management: ErrorManagement,
        inputs: tuple[str, ...] | list[str] = (INPUT,),
        **parameters: Any,
    ) -> None:
        if error_management not in ("automatic", "manual"):
            raise ValidationError(
                f"{self.type_name}: error_management must be 'automatic' or 'manual', "
                f"got {error_management!r}",
                details={"parameter": "error_management"},
            )
        links = tuple(inputs)
        if (
            INPUT not in links
            or len(set(links)) != len(links)
            or not all(isinstance(x, str) and x for x in links)
        ):
            raise ValidationError(
                f"{self.type_name}: input link points must be distinct names including "
                f"'{INPUT}', got {list(links)}",
                details={"parameter": "inputs"},
            )
        if len(links) > 1 and not self.multi_input:
            raise ValidationError(
                f"{self.type_name} is a single-input node: it takes only '{INPUT}', "
                f"got {list(links)}",
                details={"parameter": "inputs"},
            )
        unknown = set(parameters) - set(self.parameters)
        if unknown:
            raise ValidationError(
                f"{self.type_name}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                f"it takes {', '.join(self.parameters)}",
                details={"parameters": sorted(unknown)},
            )
        missing = [p for p, required in self.parameters.items() if required and p not in parameters]
        if missing:
            raise ValidationError(
                f"{self.type_name}: missing required parameter(s) {', '.join(missing)}",
                details={"parameters": missing},
            )
        self.store = store
        self.error_management: ErrorManagement = error_management
        self.inputs = links
        self.params = {name: Parameter(name, value) for name, value in parameters.items()}

    @classmethod
    def output_links(cls) -> tuple[str, ...]:
        return (*cls.outputs, ERRORS)

    def _bind(self, inputs: Any) -> dict[str, Any]:
        """Inputs by link point; a bare value (one whose keys are not exactly
        this node's link points) is the ``inputObject``."""
        if isinstance(inputs, Mapping) and set(inputs) == set(self.inputs):
            return dict(inputs)
        if len(self.inputs) == 1:
            return {INPUT: inputs}
        raise ValidationError(
            f"{self.type_name} runs when all its input link points are active: "
            f"give a mapping with {list(self.inputs)}",
            details={"inputs": list(self.inputs)},
        )

    async def run(self, inputs: Any) -> NodeResult:
        """Evaluate the parameters against `inputs` and do the node's work."""
        bound = self._bind(inputs)
        try:
            values = {name: await p.evaluate(bound) for name, p in self.params.items()}
            return await self._execute(values, bound)
        except SessionKitError as exc:
            if self.error_management == "automatic":
                raise
            return NodeResult(ERRORS, [exc.to_entry()])
        except Exception as exc:
            err = NodeError(f"{self.type_name} failed: {type(exc).__name__}: {exc}")
            if self.error_management == "automatic":
                raise err from exc
            return NodeResult(ERRORS, [err.to_entry()])

    async def _execute(self, values: dict[str, Any], inputs: dict[str, Any]) -> NodeResult:
        raise NotImplementedError


def _groups(value: Any, name: str = "access_groups") -> list[str]:
    """An access-group parameter: a text or a list of texts, nothing else."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(g, str) for g in value):
        return list(value)
    got = type(value).__name__
    if isinstance(value, (list, tuple)):
        got = f"a list holding {', '.join(sorted({type(g).__name__ for g in value}))}"
    raise ValidationError(
        f"parameter {name} must evaluate to a text or a list of texts, got {got}",
        details={"parameter": name, "type": got},
    )


class CreateUserSession(Node):
    """Creates a session for a user, with the given access groups (if any)."""

    type_name = "create_user_session"
    outputs = ("session",)
    parameters: ClassVar[dict[str, bool]] = {
        "user_id": True,
        "access_groups": False,
        "user_agent": False,
    }

    async def _execute(self, values: dict[str, Any], inputs: dict[str, Any]) -> NodeResult:
        groups = _groups(values["access_groups"]) if values.get("access_groups") is not None else []
        session = await self.store.create(
            values["user_id"], groups, user_agent=values.get("user_agent")
        )
        return NodeResult("session", session.to_dict())


class GetSpecificSessionOfUser(Node):
    """Gets one session of a user by token; `notFound` carries the input object."""

    type_name = "get_specific_session_of_user"
    outputs = ("session", "notFound")
    parameters: ClassVar[dict[str, bool]] = {"user_id": True, "token": True}

    async def _execute(self, values: dict[str, Any], inputs: dict[str, Any]) -> NodeResult:
        session = await self.store.get(values["user_id"], values["token"])
        if session is None:
            return NodeResult("notFound", inputs[INPUT])
        return NodeResult("session", session.to_dict())


class GetAllSessionsOfUser(Node):
    """Every live session of a user (without tokens), oldest first."""

    type_name = "get_all_sessions_of_user"
    outputs = ("sessions",)
    parameters: ClassVar[dict[str, bool]] = {"user_id": True}
    multi_input = False

    async def _execute(self, values: dict[str, Any], inputs: dict[str, Any]) -> NodeResult:
        sessions = await self.store.list(values["user_id"])
        return NodeResult("sessions", [s.to_dict() for s in sessions])


class DeleteSpecificSessionOfUser(Node):
    """Deletes one session of a user by token; `trigger` carries the input object."""

    type_name = "delete_specific_session_of_user"
    outputs = ("trigger",)
    parameters: ClassVar[dict[str, bool]] = {"user_id": True, "token": True}

    async def _execute(self, values: dict[str, Any], inputs: dict[str, Any]) -> NodeResult:
        await self.store.delete(values["user_id"], values["token"])
        return NodeResult("trigger", inputs[INPUT])


class DeleteAllSessionsOfUser(Node):
    """Deletes every session of a user; `trigger` carries the input object."""

    type_name = "delete_all_sessions_of_user"
    outputs = ("trigger",)
    parameters: ClassVar[dict[str, bool]] = {"user_id": True}
    multi_input = False

    async def _execute(self, values: dict[str, Any], inputs: dict[str, Any]) -> NodeResult:
        await self.store.delete_all(values["user_id"])
        return NodeResult("trigger", inputs[INPUT])


class AddAccessGroupToUserSession(Node):
    """Adds access group(s) to every live session of a user, atomically."""

    type_name = "add_access_group_to_user_session"
    outputs = ("outputObject",)
    parameters: ClassVar[dict[str, bool]] = {"user_id": True, "access_groups": True}

    async def _execute(self, values: dict[str, Any], inputs: dict[str, Any]) -> NodeResult:
        await self.store.add_groups(values["user_id"], _groups(values["access_groups"]))
        return NodeResult("outputObject", inputs[INPUT])


class RemoveAccessGroupFromUserSession(Node):
    """Removes access group(s) from every live session of a user, atomically."""

    type_name = "remove_access_group_from_user_session"
    outputs = ("outputObject",)
    parameters: ClassVar[dict[str, bool]] = {"user_id": True, "access_groups": True}

    async def _execute(self, values: dict[str, Any], inputs: dict[str, Any]) -> NodeResult:
        await self.store.remove_groups(values["user_id"], _groups(values["access_groups"]))
        return NodeResult("outputObject", inputs[INPUT])


NODE_TYPES: dict[str, type[Node]] = {
    cls.type_name: cls
    for cls in (
        CreateUserSession,
        GetSpecificSessionOfUser,
        GetAllSessionsOfUser,
        DeleteSpecificSessionOfUser,
        DeleteAllSessionsOfUser,
        AddAccessGroupToUserSession,
        RemoveAccessGroupFromUserSession,
    )
}


__all__ = [
    "ERRORS",
    "INPUT",
    "NODE_TYPES",
    "AddAccessGroupToUserSession",
    "CreateUserSession",
    "DeleteAllSessionsOfUser",
    "DeleteSpecificSessionOfUser",
    "GetAllSessionsOfUser",
    "GetSpecificSessionOfUser",
    "Node",
    "NodeResult",
    "RemoveAccessGroupFromUserSession",
]
