"""A small flow runner: a graph of session nodes defined as data (JSON).

```json
{"nodes": [{"id": "promote", "type": "add_access_group_to_user_session",
            "errorManagement": "manual",
            "params": {"user_id": "inputObject.userId", "access_groups": "'admin'"}},
           {"id": "list", "type": "get_all_sessions_of_user", "errorManagement": "automatic",
            "params": {"user_id": "inputObject.userId"}, "inputs": ["inputObject"]}],
 "relations": [{"from": "promote.outputObject", "to": "list.inputObject"}]}
```

String parameters are CEL expressions; other JSON values are used as is
(`Flow.from_dict` also takes Python callables, as nodes do). A
node's input link point that no relation feeds is fed from the flow's inputs
by the same name. Nodes whose inputs are all active run concurrently; a branch
that never activates never runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import msgspec

from sessionkit.defaults import MAX_FLOW_NODES
from sessionkit.errors import FlowDefinitionError, FlowError, SessionKitError, ValidationError
from sessionkit.expressions import Literal as LiteralParam
from sessionkit.nodes import ERRORS, NODE_TYPES, Node
from sessionkit.store import SessionStore


class NodeSpec(
    msgspec.Struct, forbid_unknown_fields=True, rename={"error_management": "errorManagement"}
):
    id: str
    type: str
    error_management: Literal["automatic", "manual"]
    params: dict[str, Any] = {}
    inputs: list[str] = msgspec.field(default_factory=lambda: ["inputObject"])


class RelationSpec(msgspec.Struct, forbid_unknown_fields=True, rename={"source": "from"}):
    source: str
    to: str


class FlowSpec(msgspec.Struct, forbid_unknown_fields=True):
    nodes: list[NodeSpec]
    relations: list[RelationSpec] = []


@dataclass
class FlowResult:
    """`outputs`: every activated output no relation consumes, by
    ``"nodeId.link"``; `ran`: node ids in the order they finished."""

    outputs: dict[str, Any] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)


def _split(ref: str, where: str) -> tuple[str, str]:
    node, dot, link = ref.partition(".")
    if not dot or not node or not link:
        raise FlowDefinitionError(
            f"relation {where} {ref!r} must be 'nodeId.linkPoint'", details={"relation": ref}
        )
    return node, link


class Flow:
    """A validated graph of nodes, ready to run many times."""

    def __init__(self, nodes: dict[str, Node], relations: list[tuple[str, str, str, str]]):
        self.nodes = nodes
        self.relations = relations  # (from node, from link, to node, to link)
        self._fed = {(t, tl) for _, _, t, tl in relations}

    @classmethod
    def from_json(cls, text: str | bytes, store: SessionStore) -> Flow:
        try:
            spec = msgspec.json.decode(text, type=FlowSpec)
        except msgspec.ValidationError as exc:
            raise FlowDefinitionError(f"invalid flow definition: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise FlowDefinitionError(f"flow definition is not valid JSON: {exc}") from exc
        return cls._build(spec, store)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], store: SessionStore) -> Flow:
        try:
            spec = msgspec.convert(obj, type=FlowSpec)
        except msgspec.ValidationError as exc:
            raise FlowDefinitionError(f"invalid flow definition: {exc}") from exc
        return cls._build(spec, store)

    @classmethod
    def _build(cls, spec: FlowSpec, store: SessionStore) -> Flow:
        if len(spec.nodes) > MAX_FLOW_NODES:
            raise FlowDefinitionError(
                f"the flow has {len(spec.nodes)} nodes; at most {MAX_FLOW_NODES} are allowed",
                details={"nodes": len(spec.nodes), "maximum": MAX_FLOW_NODES},
            )
        nodes: dict[str, Node] = {}
        for n in spec.nodes:
            if n.id in nodes:
                raise FlowDefinitionError(f"two nodes have the id {n.id!r}", details={"node": n.id})
            node_type = NODE_TYPES.get(n.type)
            if node_type is None:
                raise FlowDefinitionError(
                    f"node {n.id!r} has unknown type {n.type!r}; known types: "
                    f"{', '.join(NODE_TYPES)}",
                    details={"node": n.id},
                )
            params = {
                k: v if isinstance(v, str) or callable(v) else LiteralParam(v)
                for k, v in n.params.items()
            }
            try:
                nodes[n.id] = node_type(
                    store, error_management=n.error_management, inputs=tuple(n.inputs), **params
                )
            except ValidationError as exc:
                raise FlowDefinitionError(
                    f"node {n.id!r}: {exc.message}", details={"node": n.id, **_dict(exc.details)}
                ) from exc
        relations: list[tuple[str, str, str, str]] = []
        for r in spec.relations:
            src, src_link = _split(r.source, "from")
            dst, dst_link = _split(r.to, "to")
            for node_id, ref in ((src, r.source), (dst, r.to)):
                if node_id not in nodes:
                    raise FlowDefinitionError(
                        f"relation {r.source} -> {r.to} names no node {node_id!r} ({ref})",
                        details={"relation": f"{r.source} -> {r.to}"},
                    )
            if src_link not in nodes[src].output_links():
                raise FlowDefinitionError(
                    f"relation {r.source} -> {r.to}: node {src!r} has no output link point "
                    f"{src_link!r} (it has {', '.join(nodes[src].output_links())})",
                    details={"relation": f"{r.source} -> {r.to}"},
                )
            if dst_link not in nodes[dst].inputs:
                raise FlowDefinitionError(
                    f"relation {r.source} -> {r.to}: node {dst!r} has no input link point "
                    f"{dst_link!r} (it has {', '.join(nodes[dst].inputs)})",
                    details={"relation": f"{r.source} -> {r.to}"},
                )
            relations.append((src, src_link, dst, dst_link))
        _check_acyclic(nodes, relations)
        return cls(nodes, relations)

    async def run(self, inputs: Mapping[str, Any]) -> FlowResult:
        """Run the flow once; raises `FlowError` if an automatic node fails."""
        result = FlowResult()
        active: dict[str, dict[str, Any]] = {node_id: {} for node_id in self.nodes}
        for node_id, node in self.nodes.items():
            for link in node.inputs:
                if (node_id, link) not in self._fed:
                    if link not in inputs:
                        raise ValidationError(
                            f"the flow needs an input named {link!r} (for node {node_id!r})",
                            details={"node": node_id, "input": link},
                        )
                    active[node_id][link] = inputs[link]
        started: set[str] = set()
        failure: list[FlowError] = []

        async with anyio.create_task_group() as tg:

            def maybe_start(node_id: str) -> None:
                node = self.nodes[node_id]
                if node_id not in started and len(active[node_id]) == len(node.inputs):
                    started.add(node_id)
                    tg.start_soon(execute, node_id)

            async def execute(node_id: str) -> None:
                node = self.nodes[node_id]
                try:
                    out = await node.run(dict(active[node_id]))
                except SessionKitError as exc:
                    failure.append(FlowError(node_id, [exc.to_entry()], exc))
                    tg.cancel_scope.cancel()
                    return
                result.ran.append(node_id)
                consumed = False
                for src, src_link, dst, dst_link in self.relations:
                    if src == node_id and src_link == out.link:
                        consumed = True
                        active[dst].setdefault(dst_link, out.value)
                        maybe_start(dst)
                if not consumed:
                    result.outputs[f"{node_id}.{out.link}"] = out.value

            for node_id in self.nodes:
                maybe_start(node_id)

        if failure:
            raise failure[0]
        return result


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _check_acyclic(nodes: dict[str, Node], relations: list[tuple[str, str, str, str]]) -> None:
    """Refuse a flow with a cycle, naming it. Depth-first without recursion,
    so a long chain of nodes cannot exhaust Python's stack."""
    edges: dict[str, list[str]] = {n: [] for n in nodes}
    for src, _, dst, _ in relations:
        edges[src].append(dst)
    for n in edges:
        edges[n] = sorted(set(edges[n]))
    done: set[str] = set()
    for root in nodes:
        if root in done:
            continue
        path, on_path = [root], {root}
        stack = [iter(edges[root])]
        while stack:
            m = next(stack[-1], None)
            if m is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif m in on_path:
                cycle = [*path[path.index(m) :], m]
                raise FlowDefinitionError(
                    f"the flow has a cycle: {' -> '.join(cycle)}", details={"cycle": cycle}
                )
            elif m not in done:
                path.append(m)
                on_path.add(m)
                stack.append(iter(edges[m]))


__all__ = ["ERRORS", "Flow", "FlowDefinitionError", "FlowError", "FlowResult"]
