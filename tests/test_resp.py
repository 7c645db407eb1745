"""Packing: every call goes on the wire byte for byte as redis-py would
send it, whether packed whole, from a template, or turned into an EVAL."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.crc import key_slot

from sessionkit._resp import Template, as_eval, pack, pack_script, unpack
from sessionkit._scripts import Scripts, Settings, create_call, get_call

KEYS = ("sk:{0001}:s:abc", "sk:{0001}:")
ARGS: tuple[Any, ...] = ("", "é ünïcode", 0, 60_000, b"\x00raw\r\n", -5)


def redis_py(*parts: Any) -> bytes:
    return b"".join(Connection().pack_command(*parts))


def test_a_script_call_is_packed_as_redis_py_packs_it() -> None:
    theirs = redis_py("EVALSHA", Scripts.get.sha, 2, *KEYS, *ARGS)
    assert pack_script(Scripts.get.sha, KEYS, ARGS) == theirs
    for wrong in (None, True):  # what redis-py would not send either
        with pytest.raises(TypeError):
            pack_script(Scripts.get.sha, KEYS, (wrong,))


@pytest.mark.parametrize("fixed", [(), (7,), (0, 60_000, b"\r\n", "ü" * 20), tuple(range(12))])
def test_a_template_packs_what_the_whole_call_would(fixed: tuple[Any, ...]) -> None:
    template = Template(Scripts.get.sha, 2, 4, fixed)
    variable = (*KEYS, "", "é ünïcode")
    theirs = redis_py("EVALSHA", Scripts.get.sha, 2, *variable, *fixed)
    assert template.pack(*variable) == theirs
    assert template.fixed == fixed


def test_a_template_refuses_a_call_of_another_shape() -> None:
    template = Template(Scripts.get.sha, 2, 4, (1, 2))
    with pytest.raises(TypeError, match="takes 4 parts, got 3"):
        template.pack(*KEYS, "")
    with pytest.raises(TypeError):
        template.pack(*KEYS, "", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Template(Scripts.get.sha, 0, 4, ())


def test_the_get_call_is_the_whole_call_packed_from_its_template() -> None:
    settings = Settings("sk", 1000, 500, 10, 60_000, 0, slide_interval_ms=250)
    call = get_call(settings, 1, "abc", "digest")
    theirs = redis_py("EVALSHA", Scripts.get.sha, 2, *KEYS, "digest", "abc", 500, 60_000, 250)
    assert call.payload == theirs
    assert call.slot == key_slot(KEYS[0].encode()) and call.script is Scripts.get


@pytest.mark.parametrize("events_maxlen", [1000, 0])
def test_the_create_call_is_the_whole_call_packed_from_its_template(events_maxlen: int) -> None:
    settings = Settings("sk", 1000, 500, 10, 60_000, events_maxlen)
    call = create_call(settings, "ü1", "digest", 1, "abc", b'{"u":"\xc3\xbc1"}', ("b", "a"))
    user_keys = ("sk:{0001}:u:digest", "sk:{0001}:c:digest", "sk:{0001}:g:digest")
    keys = ("sk:{0001}:s:abc", *user_keys, "sk:{0001}:", "sk:{0001}:events")
    events = ("ü1", b'["b","a"]') if events_maxlen else ("", "")
    args = ("abc", "digest", b'{"u":"\xc3\xbc1"}', *events, "\0b\0a\0", 1000, 500, 10)
    theirs = redis_py("EVALSHA", Scripts.create.sha, 6, *keys, *args, events_maxlen)
    assert call.payload == theirs
    assert call.slot == key_slot(keys[0].encode()) and call.script is Scripts.create


@pytest.mark.parametrize("keys", [KEYS, ()])
def test_an_evalsha_turned_into_an_eval_keeps_its_keys_and_arguments(
    keys: tuple[str, ...],
) -> None:
    script = Scripts.get
    evalsha = pack_script(script.sha, keys, ARGS)
    assert as_eval(evalsha, script.sha, script.source) == redis_py(
        "EVAL", script.source, len(keys), *keys, *ARGS
    )
    with pytest.raises(ValueError):  # another script's call
        as_eval(evalsha, Scripts.create.sha, Scripts.create.source)


def test_a_packed_command_unpacks_into_its_parts() -> None:
    parts = ("EVALSHA", "é ünïcode", "", b"\x00raw\r\n", 60_000, -5)
    assert unpack(pack(*parts)) == [
        b"EVALSHA",
        "é ünïcode".encode(),
        b"",
        b"\x00raw\r\n",
        b"60000",
        b"-5",
    ]
