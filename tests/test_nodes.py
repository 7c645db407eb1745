"""The seven session nodes: the platform's node contract, both error modes,
against the real embedded server."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sessionkit import SessionKitError, SessionStore, ValidationError
from sessionkit.defaults import MAX_COMPREHENSION_STEPS
from sessionkit.errors import ExpressionError
from sessionkit.expressions import literal
from sessionkit.nodes import (
    NODE_TYPES,
    AddAccessGroupToUserSession,
    CreateUserSession,
    DeleteAllSessionsOfUser,
    DeleteSpecificSessionOfUser,
    GetAllSessionsOfUser,
    GetSpecificSessionOfUser,
    RemoveAccessGroupFromUserSession,
)

pytestmark = [pytest.mark.server, pytest.mark.backends("server")]

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


async def test_create_emits_the_session_in_platform_field_names(store: SessionStore) -> None:
    node = CreateUserSession(
        store,
        error_management="automatic",
        user_id="inputObject.userId",
        access_groups="inputObject.roles",
        user_agent="inputObject.ua",
    )
    result = await node.run({"userId": "alice", "roles": ["a", "b"], "ua": UA})
    assert result.link == "session"
    s = result.value
    assert s["userId"] == "alice" and s["accessGroupKeys"] == ["a", "b"]
    assert s["token"] and s["creationDtm"].endswith("Z")
    assert s["userAgent"]["family"] == "Firefox"
    assert (await store.resolve(s["token"])) is not None


async def test_create_without_groups_and_with_a_single_text_group(store: SessionStore) -> None:
    bare = CreateUserSession(store, error_management="automatic", user_id="inputObject.id")
    assert (await bare.run({"id": "u"})).value["accessGroupKeys"] == []
    one = CreateUserSession(
        store, error_management="automatic", user_id="inputObject.id", access_groups="'solo'"
    )
    assert (await one.run({"id": "u"})).value["accessGroupKeys"] == ["solo"]


async def test_get_specific_session_and_not_found_carrying_the_input(store: SessionStore) -> None:
    s = await store.create("alice", "g")
    node = GetSpecificSessionOfUser(
        store, error_management="manual", user_id="inputObject.userId", token="inputObject.token"
    )
    found = await node.run({"userId": "alice", "token": s.token})
    assert found.link == "session" and found.value["id"] == s.id
    missing_input = {"userId": "bob", "token": s.token, "extra": [1, 2]}
    missing = await node.run(missing_input)
    assert missing.link == "notFound" and missing.value == missing_input


async def test_get_all_lists_sessions(store: SessionStore) -> None:
    for _ in range(3):
        await store.create("carol", "g")
    node = GetAllSessionsOfUser(store, error_management="automatic", user_id="inputObject.u")
    result = await node.run({"u": "carol"})
    assert result.link == "sessions" and len(result.value) == 3
    assert all(s["token"] is None and s["userId"] == "carol" for s in result.value)


async def test_delete_specific_and_delete_all_fire_their_trigger(store: SessionStore) -> None:
    a = await store.create("dave")
    await store.create("dave")
    one = DeleteSpecificSessionOfUser(
        store, error_management="automatic", user_id="inputObject.u", token="inputObject.t"
    )
    r = await one.run({"u": "dave", "t": a.token})
    assert r.link == "trigger" and r.value == {"u": "dave", "t": a.token}
    assert len(await store.list("dave")) == 1
    every = DeleteAllSessionsOfUser(store, error_management="automatic", user_id="inputObject.u")
    assert (await every.run({"u": "dave"})).link == "trigger"
    assert await store.list("dave") == []


async def test_add_and_remove_groups_change_every_session_and_pass_the_input(
    store: SessionStore,
) -> None:
    for _ in range(3):
        await store.create("erin", "base")
    add = AddAccessGroupToUserSession(
        store, error_management="automatic", user_id="inputObject.u", access_groups="['x', 'y']"
    )
    inp = {"u": "erin", "note": "kept"}
    r = await add.run(inp)
    assert r.link == "outputObject" and r.value == inp
    assert {tuple(s.access_groups) for s in await store.list("erin")} == {("base", "x", "y")}
    remove = RemoveAccessGroupFromUserSession(
        store, error_management="automatic", user_id="inputObject.u", access_groups="'x'"
    )
    assert (await remove.run(inp)).link == "outputObject"
    assert {tuple(s.access_groups) for s in await store.list("erin")} == {("base", "y")}


@pytest.mark.parametrize("bad", ["42", "{'a': 1}", "['ok', 3]", "true", "null"])
async def test_a_group_expression_that_is_not_text_is_a_validation_error(
    store: SessionStore, bad: str
) -> None:
    await store.create("frank", "keep")
    auto = AddAccessGroupToUserSession(
        store, error_management="automatic", user_id="inputObject.u", access_groups=bad
    )
    with pytest.raises(ValidationError, match="access_groups must evaluate to a text") as info:
        await auto.run({"u": "frank"})
    assert info.value.code == "validation_error"
    manual = RemoveAccessGroupFromUserSession(
        store, error_management="manual", user_id="inputObject.u", access_groups=bad
    )
    r = await manual.run({"u": "frank"})
    assert r.link == "errors" and r.value[0]["code"] == "validation_error"
    assert r.value[0]["details"]["parameter"] == "access_groups"
    assert [s.access_groups for s in await store.list("frank")] == [["keep"]]


ALL_NODES: list[tuple[str, dict[str, Any]]] = [
    ("create_user_session", {"user_id": "inputObject.u"}),
    ("get_specific_session_of_user", {"user_id": "inputObject.u", "token": "'t'"}),
    ("get_all_sessions_of_user", {"user_id": "inputObject.u"}),
    ("delete_specific_session_of_user", {"user_id": "inputObject.u", "token": "'t'"}),
    ("delete_all_sessions_of_user", {"user_id": "inputObject.u"}),
    ("add_access_group_to_user_session", {"user_id": "inputObject.u", "access_groups": "'g'"}),
    ("remove_access_group_from_user_session", {"user_id": "inputObject.u", "access_groups": "'g'"}),
]


@pytest.mark.parametrize(("type_name", "params"), ALL_NODES)
async def test_every_node_in_both_error_modes(
    store: SessionStore, type_name: str, params: dict[str, Any]
) -> None:
    cls = NODE_TYPES[type_name]
    bad_input = {"u": ""}  # an empty user id: the engine's validation error
    with pytest.raises(SessionKitError) as info:
        await cls(store, error_management="automatic", **params).run(bad_input)
    assert info.value.code == "validation_error" and "user_id" in info.value.message
    result = await cls(store, error_management="manual", **params).run(bad_input)
    assert result.link == "errors"
    (entry,) = result.value
    assert entry == info.value.to_entry() | {"message": entry["message"]}
    assert set(entry) == {"origin", "code", "message", "details"}
    assert entry["origin"] == "client"
    ok = await cls(store, error_management="manual", **params).run({"u": "someone"})
    assert ok.link in cls.outputs


async def test_expression_errors_are_reported_at_build_and_at_run(store: SessionStore) -> None:
    with pytest.raises(ExpressionError, match="user_id") as info:
        GetAllSessionsOfUser(store, error_management="automatic", user_id="inputObject.")
    assert isinstance(info.value, ValueError)
    node = GetAllSessionsOfUser(store, error_management="manual", user_id="inputObject.missing")
    r = await node.run({"u": "x"})
    assert r.link == "errors" and r.value[0]["code"] == "expression_error"
    assert r.value[0]["details"]["parameter"] == "user_id"
    strict = GetAllSessionsOfUser(store, error_management="automatic", user_id="nothere.u")
    with pytest.raises(ExpressionError, match="nothere"):
        await strict.run({"u": "x"})


async def test_parameters_may_be_literals_and_callables(store: SessionStore) -> None:
    async def groups(inputs: dict[str, Any]) -> list[str]:
        return [inputs["inputObject"]["role"], "member"]

    node = CreateUserSession(
        store,
        error_management="automatic",
        user_id=literal("literal-user"),
        access_groups=groups,
    )
    s = (await node.run({"role": "owner"})).value
    assert s["userId"] == "literal-user" and s["accessGroupKeys"] == ["member", "owner"]

    def boom(inputs: dict[str, Any]) -> str:
        raise RuntimeError("no")

    failing = GetAllSessionsOfUser(store, error_management="manual", user_id=boom)
    r = await failing.run({})
    assert r.link == "errors" and "RuntimeError" in r.value[0]["message"]


async def test_multi_input_nodes_need_every_link_point(store: SessionStore) -> None:
    node = CreateUserSession(
        store,
        error_management="automatic",
        inputs=("inputObject", "profile"),
        user_id="inputObject.id",
        access_groups="profile.roles",
    )
    r = await node.run({"inputObject": {"id": "gina"}, "profile": {"roles": ["r"]}})
    assert r.value["userId"] == "gina" and r.value["accessGroupKeys"] == ["r"]
    with pytest.raises(ValidationError, match="all its input link points"):
        await node.run({"inputObject": {"id": "gina"}})


def test_single_input_nodes_refuse_extra_inputs_and_bad_definitions(store: SessionStore) -> None:
    with pytest.raises(ValidationError, match="single-input"):
        GetAllSessionsOfUser(
            store, error_management="automatic", inputs=("inputObject", "x"), user_id="'u'"
        )
    with pytest.raises(ValidationError, match="error_management"):
        GetAllSessionsOfUser(store, error_management="auto", user_id="'u'")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="missing required parameter"):
        GetSpecificSessionOfUser(store, error_management="manual", user_id="'u'")
    with pytest.raises(ValidationError, match="unknown parameter"):
        GetAllSessionsOfUser(store, error_management="manual", user_id="'u'", userid="'u'")


async def test_comprehensions_over_too_many_elements_are_refused_before_they_run(
    store: SessionStore,
) -> None:
    """The CEL evaluator's comprehensions are quadratic and hold the GIL (400
    elements nested twice took 3 s): an evaluation that could take more than
    MAX_COMPREHENSION_STEPS is refused, in the node's error mode."""
    await store.create("u3")
    expr = "inputObject.ids.exists(i, inputObject.ids.exists(j, i + j < 0)) ? 'x' : 'u3'"
    node = GetAllSessionsOfUser(store, error_management="manual", user_id=expr)
    small = await node.run({"ids": list(range(50))})  # 50 ** 3 steps: fine
    assert small.link == "sessions" and [s["userId"] for s in small.value] == ["u3"]
    started = time.monotonic()
    big = await node.run({"ids": list(range(5000))})
    # Refused, not run: running it would take minutes (400 elements took 3 s),
    # so even a machine loaded by other tests stays far under this bound.
    assert time.monotonic() - started < 5.0
    assert big.link == "errors" and big.value[0]["code"] == "expression_error"
    details = big.value[0]["details"]
    assert details["depth"] == 2 and details["maximum"] == MAX_COMPREHENSION_STEPS
    assert details["elements"] > 100
    # A list written in the expression counts as well as the inputs.
    listed = "[" + ",".join(["1"] * 1500) + "].map(x, x + 1).size() > 0 ? 'u3' : 'x'"
    with pytest.raises(ExpressionError, match=r"up to 150\d elements"):
        await GetAllSessionsOfUser(store, error_management="automatic", user_id=listed).run({})
