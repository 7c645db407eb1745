"""The flow runner: flows as data, validated on load, nodes run concurrently
when their inputs are active, automatic errors stop the flow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from sessionkit import SessionStore, ValidationError
from sessionkit.flow import Flow, FlowDefinitionError, FlowError

pytestmark = [pytest.mark.server, pytest.mark.backends("server")]

FLOWS = Path(__file__).parent.parent / "examples" / "flows"


def node(id_: str, type_: str, mode: str = "automatic", **kw: Any) -> dict[str, Any]:
    return {"id": id_, "type": type_, "errorManagement": mode, **kw}


async def test_sign_in_flow(store: SessionStore) -> None:
    flow = Flow.from_json((FLOWS / "sign_in.json").read_text(), store)
    result = await flow.run(
        {"inputObject": {"userId": "alice", "roles": ["member", "beta"], "userAgent": "curl/8.5"}}
    )
    assert result.ran == ["signIn"]
    session = result.outputs["signIn.session"]
    assert session["accessGroupKeys"] == ["beta", "member"]
    assert (await store.resolve(session["token"])) is not None
    bad = await flow.run({"inputObject": {"userId": "", "roles": [], "userAgent": None}})
    assert bad.outputs["signIn.errors"][0]["code"] == "validation_error"


async def test_sign_out_everywhere_flow(store: SessionStore) -> None:
    me = await store.create("bob")
    for _ in range(3):
        await store.create("bob")
    flow = Flow.from_json((FLOWS / "sign_out_everywhere.json").read_text(), store)
    stranger = await flow.run({"inputObject": {"userId": "bob", "token": "not-a-token"}})
    assert stranger.ran == ["current"] and "current.notFound" in stranger.outputs
    assert len(await store.list("bob")) == 4  # a bad token signs nobody out
    result = await flow.run({"inputObject": {"userId": "bob", "token": me.token}})
    assert result.ran == ["current", "signOutAll"]
    assert "signOutAll.trigger" in result.outputs
    assert await store.list("bob") == []


async def test_promote_user_flow(store: SessionStore) -> None:
    for _ in range(3):
        await store.create("carol", "member")
    flow = Flow.from_json((FLOWS / "promote_user.json").read_text(), store)
    result = await flow.run({"inputObject": {"userId": "carol"}})
    assert result.ran == ["promote", "list"]
    sessions = result.outputs["list.sessions"]
    assert [s["accessGroupKeys"] for s in sessions] == [["admin", "editor", "member"]] * 3


async def test_manual_errors_go_down_the_errors_branch(store: SessionStore) -> None:
    flow = Flow.from_dict(
        {
            "nodes": [
                node("promote", "add_access_group_to_user_session", "manual",
                     params={"user_id": "inputObject.userId", "access_groups": "inputObject.g"}),
                node("after", "get_all_sessions_of_user",
                     params={"user_id": "'audit'"}),
            ],
            "relations": [{"from": "promote.errors", "to": "after.inputObject"}],
        },
        store,
    )  # fmt: skip
    await store.create("audit")
    ok = await flow.run({"inputObject": {"userId": "dan", "g": "x"}})
    assert ok.ran == ["promote"] and "promote.outputObject" in ok.outputs
    failed = await flow.run({"inputObject": {"userId": "dan", "g": 5}})
    assert failed.ran == ["promote", "after"]
    assert len(failed.outputs["after.sessions"]) == 1


async def test_automatic_errors_stop_the_flow_and_name_the_node(store: SessionStore) -> None:
    reached: list[str] = []

    async def slow_user(inputs: dict[str, Any]) -> str:
        await anyio.sleep(5)
        reached.append("slow")
        return "never"

    flow = Flow.from_dict(
        {
            "nodes": [
                node("fail", "get_all_sessions_of_user", params={"user_id": "inputObject.nope"}),
                node("next", "delete_all_sessions_of_user", params={"user_id": "'x'"}),
                node("slow", "create_user_session", params={"user_id": slow_user}),
            ],
            "relations": [{"from": "fail.sessions", "to": "next.inputObject"}],
        },
        store,
    )
    with anyio.fail_after(3), pytest.raises(FlowError) as info:
        await flow.run({"inputObject": {}})
    assert info.value.node == "fail"
    assert info.value.errors[0]["code"] == "expression_error"
    assert reached == []
    assert await store.list("slow") == []


async def test_a_multi_input_node_waits_for_both_inputs(store: SessionStore) -> None:
    order: list[str] = []

    async def late_profile(inputs: dict[str, Any]) -> str:
        order.append("profile-started")
        await anyio.sleep(0.2)
        order.append("profile-done")
        return "erin"

    flow = Flow.from_dict(
        {
            "nodes": [
                node("signIn", "create_user_session",
                     params={"user_id": "profile[0].userId",
                             "access_groups": "inputObject.roles"},
                     inputs=["inputObject", "profile"]),
                node("seed", "create_user_session", params={"user_id": late_profile}),
                node("profileOf", "get_all_sessions_of_user", params={"user_id": "'erin'"}),
            ],
            "relations": [
                {"from": "seed.session", "to": "profileOf.inputObject"},
                {"from": "profileOf.sessions", "to": "signIn.profile"},
            ],
        },
        store,
    )  # fmt: skip
    result = await flow.run({"inputObject": {"roles": ["r"]}})
    assert result.ran == ["seed", "profileOf", "signIn"]
    assert order == ["profile-started", "profile-done"]
    assert result.outputs["signIn.session"]["userId"] == "erin"


async def test_independent_branches_run_concurrently(store: SessionStore) -> None:
    met = {"a": anyio.Event(), "b": anyio.Event()}

    def rendezvous(me: str, other: str) -> Any:
        async def param(inputs: dict[str, Any]) -> str:
            met[me].set()
            await met[other].wait()  # deadlocks if the branches ran one after the other
            return f"user-{me}"

        return param

    flow = Flow.from_dict(
        {
            "nodes": [
                node("a", "create_user_session", params={"user_id": rendezvous("a", "b")}),
                node("b", "create_user_session", params={"user_id": rendezvous("b", "a")}),
            ]
        },
        store,
    )
    with anyio.fail_after(3):
        result = await flow.run({"inputObject": {}})
    assert sorted(result.ran) == ["a", "b"]
    assert {result.outputs[f"{n}.session"]["userId"] for n in "ab"} == {"user-a", "user-b"}


def _defn(
    nodes: list[dict[str, Any]], relations: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    return {"nodes": nodes, "relations": relations or []}


GET_ALL = {"type": "get_all_sessions_of_user", "errorManagement": "automatic",
           "params": {"user_id": "'u'"}}  # fmt: skip


@pytest.mark.parametrize(
    ("definition", "culprit"),
    [
        (_defn([{"id": "n", "type": "nope", "errorManagement": "manual"}]), "unknown type 'nope'"),
        (_defn([{"id": "n", **GET_ALL}], [{"from": "n.sessions", "to": "ghost.inputObject"}]),
         "no node 'ghost'"),
        (_defn([{"id": "n", **GET_ALL}, {"id": "m", **GET_ALL}],
               [{"from": "n.missing", "to": "m.inputObject"}]), "no output link point 'missing'"),
        (_defn([{"id": "n", **GET_ALL}, {"id": "m", **GET_ALL}],
               [{"from": "n.sessions", "to": "m.other"}]), "no input link point 'other'"),
        (_defn([{"id": "n", **GET_ALL}, {"id": "m", **GET_ALL}],
               [{"from": "n.sessions", "to": "m.inputObject"},
                {"from": "m.sessions", "to": "n.inputObject"}]), "cycle"),
        (_defn([{"id": "n", **GET_ALL}, {"id": "n", **GET_ALL}]), "two nodes have the id 'n'"),
        (_defn([{"id": "n", "type": "get_all_sessions_of_user", "params": {"user_id": "'u'"}}]),
         "errorManagement"),
        (_defn([{"id": "n", **GET_ALL, "params": {"user_id": "inputObject."}}]),
         "node 'n': parameter user_id"),
        (_defn([{"id": "n", **GET_ALL}], [{"from": "nsessions", "to": "n.inputObject"}]),
         "'nodeId.linkPoint'"),
        (_defn([{"id": "n", **GET_ALL, "inputs": ["inputObject", "x"]}]), "single-input"),
    ],
)  # fmt: skip
def test_bad_flow_definitions_name_the_culprit(
    store: SessionStore, definition: dict[str, Any], culprit: str
) -> None:
    with pytest.raises(FlowDefinitionError, match=culprit.replace("(", r"\(")) as info:
        Flow.from_dict(definition, store)
    assert isinstance(info.value, ValueError)
    with pytest.raises(FlowDefinitionError):
        Flow.from_json(json.dumps(definition), store)


def test_json_that_is_not_a_flow_is_refused(store: SessionStore) -> None:
    with pytest.raises(FlowDefinitionError, match="not valid JSON"):
        Flow.from_json("{nodes: ", store)


async def test_a_missing_flow_input_is_a_clear_error(store: SessionStore) -> None:
    flow = Flow.from_dict(_defn([{"id": "n", **GET_ALL}]), store)
    with pytest.raises(ValidationError, match="needs an input named 'inputObject'"):
        await flow.run({})


def _chain(n: int) -> dict[str, Any]:
    """n Get All nodes, each fed by the one before."""
    return _defn(
        [{"id": f"n{i}", **GET_ALL} for i in range(n)],
        [{"from": f"n{i}.sessions", "to": f"n{i + 1}.inputObject"} for i in range(n - 1)],
    )


async def test_a_chain_of_1000_nodes_loads_and_runs(store: SessionStore) -> None:
    """The cycle check walks without recursion: a long chain is not a
    RecursionError (1,000 frames would be)."""
    flow = Flow.from_dict(_chain(1000), store)
    result = await flow.run({"inputObject": {}})
    assert len(result.ran) == 1000 and result.ran[-1] == "n999"


def test_a_cycle_at_the_end_of_a_long_chain_is_named(store: SessionStore) -> None:
    definition = _chain(1000)
    definition["relations"].append({"from": "n999.sessions", "to": "n500.inputObject"})
    with pytest.raises(FlowDefinitionError, match="cycle") as info:
        Flow.from_dict(definition, store)
    assert info.value.details["cycle"] == [*(f"n{i}" for i in range(500, 1000)), "n500"]


def test_a_flow_over_1000_nodes_is_refused(store: SessionStore) -> None:
    with pytest.raises(FlowDefinitionError, match="1001 nodes; at most 1000"):
        Flow.from_dict(_chain(1001), store)


def test_an_expression_over_4_kib_is_refused_at_build(store: SessionStore) -> None:
    long = _defn([{"id": "n", **GET_ALL, "params": {"user_id": "'" + "u" * 4095 + "'"}}])
    with pytest.raises(FlowDefinitionError, match="at most 4096") as info:
        Flow.from_dict(long, store)
    assert info.value.details["parameter"] == "user_id"


@pytest.mark.parametrize(
    "expression",
    [
        "[1, 2].map(x, [1, 2].map(y, [1, 2].map(z, x * y * z)))",
        "inputObject.ids.exists (i, inputObject.ids.all(j, inputObject.ids .filter(k, k > i)))",
    ],
)
def test_comprehensions_nested_three_deep_are_refused_at_build(
    store: SessionStore, expression: str
) -> None:
    """Each level of map/filter/all/exists multiplies the work (a 190-character
    expression nested deeper ran for 14 s holding the GIL)."""
    deep = _defn([{"id": "n", **GET_ALL, "params": {"user_id": expression}}])
    with pytest.raises(FlowDefinitionError, match="nested 3 deep; at most 2"):
        Flow.from_dict(deep, store)


async def test_two_levels_of_comprehension_and_macro_names_in_strings_are_fine(
    store: SessionStore,
) -> None:
    await store.create("u2")
    expression = "'.map(.map(.map(' == '' ? 'x' : [['u']].map(a, a.map(b, b + '2'))[0][0]"
    flow = Flow.from_dict(_defn([{"id": "n", **GET_ALL, "params": {"user_id": expression}}]), store)
    result = await flow.run({"inputObject": {}})
    assert [s["userId"] for s in result.outputs["n.sessions"]] == ["u2"]
