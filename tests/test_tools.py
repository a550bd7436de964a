"""Client tools and room chat without a room: the sans-I/O rules with literal inputs, then the asyncio runner
driven with a stand-in for LiveKit's ``perform_rpc`` (it raises the SDK's own ``rtc.RpcError``) and a reply list
standing in for the engine client. What is asserted is what the engine would be sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from livekit import rtc

from core.errors import ConfigError, ToolError
from transport.chat import ChatConfig, ChatText
from transport.engine_protocol import ClientToolCall
from transport.tools import ClientTools, ToolCalls, ToolConfig
from transport.tools_core import (
    UNSUPPORTED_METHOD,
    RpcVerdict,
    ToolRoutes,
    encode_params,
    encode_result,
    error_text,
    rpc_verdict,
)

# ---------------------------------------------------------------------------------------------- sans-I/O


def test_results_are_strings_json_or_the_vendors_default() -> None:
    assert encode_result("t", "plain text", max_chars=100) == "plain text"
    assert encode_result("t", {"b": 1, "a": [1, 2]}, max_chars=100) == '{"b":1,"a":[1,2]}'
    assert encode_result("t", 3, max_chars=100) == "3"
    assert encode_result("t", "é", max_chars=100) == "é"
    assert encode_result("lookup", None, max_chars=100) == "Client tool: lookup called successfully."


def test_a_result_that_cannot_be_sent_is_a_tool_error() -> None:
    with pytest.raises(ToolError, match="not a string or JSON"):
        encode_result("t", object(), max_chars=100)
    with pytest.raises(ToolError, match="not a string or JSON"):
        encode_result("t", float("nan"), max_chars=100)
    with pytest.raises(ToolError, match="11 characters is over the limit of 10"):
        encode_result("t", "x" * 11, max_chars=10)
    assert encode_result("t", "x" * 10, max_chars=10) == "x" * 10


def test_params_are_a_json_object() -> None:
    assert json.loads(encode_params({"city": "Zürich", "n": 2})) == {"city": "Zürich", "n": 2}


def test_rpc_codes_decide_whether_to_ask_the_next_participant() -> None:
    # livekit-rtc rpc.py RpcError.ErrorCode
    assert UNSUPPORTED_METHOD == rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD == 1400
    for code in (1400, 1401, 1404, 1501, 1503):
        assert rpc_verdict(code) is RpcVerdict.NEXT, code
    assert rpc_verdict(1502) is RpcVerdict.TIMEOUT
    for code in (1500, 1402, 1403, 1504, 1505, 2000):
        assert rpc_verdict(code) is RpcVerdict.ERROR, code


def test_error_texts_are_short_and_carry_no_exception_text() -> None:
    assert error_text("x", "unknown") == "Client tool with name x is not defined on client"
    assert error_text("x", "timeout", timeout_s=2.5) == "Client tool x did not answer within 2.5 s"
    assert error_text("x", "exception", detail="KeyError") == "Client tool x failed (KeyError)"
    long = error_text("x", "failed", detail="y" * 1000)
    assert len(long) < 250 and long.endswith("…")
    assert error_text("x", "rpc", detail="no theme 'pink'", code=1500) == \
        "Client tool x failed: no theme 'pink' (RPC error 1500)"
    assert "too large" in error_text("x", "rpc", code=1402)


def test_routes_ask_the_last_participant_that_answered_first() -> None:
    routes = ToolRoutes(capacity=2)
    assert routes.order("m", ["a", "b", "c"]) == ["a", "b", "c"]
    routes.answered("m", "c")
    assert routes.order("m", ["a", "b", "c"]) == ["c", "a", "b"]
    assert routes.order("m", ["a", "b"]) == ["a", "b"]  # c left
    assert routes.order("other", ["a", "b", "c"]) == ["a", "b", "c"]
    routes.forget("m", "c")
    assert routes.order("m", ["a", "b", "c"]) == ["a", "b", "c"]
    routes.answered("m1", "a")
    routes.answered("m2", "b")
    routes.answered("m3", "c")  # capacity 2: m1 is forgotten
    assert len(routes) == 2 and routes.order("m1", ["b", "a"]) == ["b", "a"]


def test_config_refuses_impossible_values() -> None:
    with pytest.raises(ConfigError):
        ToolConfig(timeout_s=0)
    with pytest.raises(ConfigError):
        ToolConfig(max_in_flight=0)
    with pytest.raises(ConfigError):
        ChatConfig(max_chars=0)


def test_chat_text_is_cut_at_the_limit() -> None:
    text = ChatText(5)
    assert text.add("ab") and text.add("cd")
    assert not text.add("efg")
    assert text.text == "abcde" and text.truncated
    whole = ChatText(5)
    assert whole.add("abcde")
    assert whole.text == "abcde" and not whole.truncated


def test_chat_text_chunking_does_not_change_the_message() -> None:
    message = "héllo wörld, a chat message"
    for size in (1, 2, 7, len(message)):
        text = ChatText(12)
        for i in range(0, len(message), size):
            if not text.add(message[i:i + size]):
                break
        assert text.text == message[:12] and text.truncated


# ---------------------------------------------------------------------------------------------- the runner

Rpc = Callable[[str, str, str, float, float], Awaitable[str]]


class Room:
    """Participants with RPC methods, as ``perform_rpc`` sees them: a method a participant lacks answers 1400."""

    def __init__(self, methods: dict[str, dict[str, Callable[[dict[str, Any]], Awaitable[str]]]]) -> None:
        self.methods = methods
        self.asked: list[tuple[str, str, float, float]] = []

    async def perform(self, destination: str, method: str, payload: str, timeout: float, ack: float) -> str:
        self.asked.append((destination, method, timeout, ack))
        handler = self.methods.get(destination, {}).get(method)
        if handler is None:
            raise rtc.RpcError(1400, "Method not supported at destination")
        try:
            async with asyncio.timeout(timeout):
                return await handler(json.loads(payload))
        except TimeoutError:
            raise rtc.RpcError(1502, "Response timeout") from None

    @property
    def callers(self) -> list[str]:
        return list(self.methods)


class Engine:
    def __init__(self) -> None:
        self.results: list[tuple[str, str, bool]] = []
        self.ready = True

    def reply(self, call_id: str, result: str, is_error: bool) -> bool:
        if self.ready:
            self.results.append((call_id, result, is_error))
        return self.ready

    async def until(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.results) < n:
                await asyncio.sleep(0.005)


def call(name: str, call_id: str, **params: Any) -> ClientToolCall:
    return ClientToolCall(name, call_id, params, 1)


def runner(tools: ClientTools, room: Room | None = None) -> tuple[ToolCalls, Engine]:
    engine = Engine()
    room = room or Room({})
    return ToolCalls(tools, reply=engine.reply, perform_rpc=room.perform, callers=lambda: room.callers), engine


async def test_a_registered_handler_answers_with_its_result() -> None:
    async def weather(params: dict[str, Any]) -> dict[str, Any]:
        return {"city": params["city"], "sky": "clear"}

    calls, engine = runner(ClientTools({"weather": weather}))
    calls.call(call("weather", "tc_1", city="Oslo"))
    await engine.until(1)
    assert engine.results == [("tc_1", '{"city":"Oslo","sky":"clear"}', False)]
    stats = calls.stats()
    assert (stats.calls, stats.local, stats.errors, stats.in_flight) == (1, 1, 0, 0)


async def test_handler_failures_become_error_results_without_their_text() -> None:
    async def broken(_params: dict[str, Any]) -> str:
        raise RuntimeError("GET https://api.example/?key=sk_secret failed")

    async def refusing(_params: dict[str, Any]) -> str:
        raise ToolError("the city is unknown")

    async def own_timeout(_params: dict[str, Any]) -> str:
        raise TimeoutError("the HTTP client gave up")

    calls, engine = runner(ClientTools({"broken": broken, "refusing": refusing, "own_timeout": own_timeout}))
    calls.call(call("broken", "a"))
    calls.call(call("refusing", "b"))
    calls.call(call("own_timeout", "c"))
    await engine.until(3)
    results = {r[0]: r for r in engine.results}
    assert results["a"] == ("a", "Client tool broken failed (RuntimeError)", True)
    assert results["b"] == ("b", "Client tool refusing failed: the city is unknown", True)
    assert results["c"] == ("c", "Client tool own_timeout failed (TimeoutError)", True)  # not our timeout
    assert not any("sk_secret" in r[1] for r in engine.results)
    assert calls.stats().errors == 3 and calls.stats().timeouts == 0


async def test_a_slow_handler_times_out_with_an_error_result() -> None:
    async def slow(_params: dict[str, Any]) -> str:
        await asyncio.sleep(10)
        return "late"

    calls, engine = runner(ClientTools({"slow": slow}, config=ToolConfig(timeout_s=0.1)))
    started = asyncio.get_running_loop().time()
    calls.call(call("slow", "tc_slow"))
    await engine.until(1)
    assert engine.results == [("tc_slow", "Client tool slow did not answer within 0.1 s", True)]
    assert asyncio.get_running_loop().time() - started < 2.0
    assert calls.stats().timeouts == 1


async def test_unknown_tools_are_answered_with_an_error() -> None:
    calls, engine = runner(ClientTools(), Room({"alice": {}, "bob": {}}))
    calls.call(call("nowhere", "tc_x"))
    await engine.until(1)
    assert engine.results == [("tc_x", "Client tool with name nowhere is not defined on client", True)]
    assert calls.stats().unknown == 1 and calls.stats().rpc_attempts == 2  # both callers were asked

    no_forward, engine2 = runner(ClientTools(config=ToolConfig(forward=False)), Room({"alice": {}}))
    no_forward.call(call("nowhere", "tc_y"))
    await engine2.until(1)
    assert engine2.results[0][2] is True and no_forward.stats().rpc_attempts == 0


async def test_forwarded_calls_find_the_participant_with_the_method() -> None:
    async def set_theme(params: dict[str, Any]) -> str:
        return f"theme is {params['theme']}"

    room = Room({"alice": {}, "bob": {"set_theme": set_theme}})
    calls, engine = runner(ClientTools(), room)
    calls.call(call("set_theme", "tc_1", theme="dark"))
    await engine.until(1)
    assert engine.results == [("tc_1", "theme is dark", False)]
    assert [a[0] for a in room.asked] == ["alice", "bob"]
    # The next call goes to bob first: he answered last time.
    calls.call(call("set_theme", "tc_2", theme="light"))
    await engine.until(2)
    assert engine.results[1] == ("tc_2", "theme is light", False)
    assert [a[0] for a in room.asked] == ["alice", "bob", "bob"]
    stats = calls.stats()
    assert (stats.forwarded, stats.rpc_attempts, stats.errors) == (2, 3, 0)
    # Every RPC was given the call's remaining time and at most the acknowledgement timeout.
    assert all(0 < timeout <= 10.0 and ack == pytest.approx(2.0) for _d, _m, timeout, ack in room.asked)


async def test_a_participants_error_and_timeout_are_error_results() -> None:
    async def failing(_params: dict[str, Any]) -> str:
        raise rtc.RpcError(1500, "no such theme")

    async def hanging(_params: dict[str, Any]) -> str:
        await asyncio.sleep(10)
        return ""

    room = Room({"alice": {"failing": failing, "hanging": hanging}})
    calls, engine = runner(ClientTools(config=ToolConfig(timeout_s=0.2)), room)
    calls.call(call("failing", "f"))
    calls.call(call("hanging", "h"))
    await engine.until(2)
    results = {r[0]: r for r in engine.results}
    assert results["f"] == ("f", "Client tool failing failed: no such theme (RPC error 1500)", True)
    assert results["h"] == ("h", "Client tool hanging did not answer within 0.2 s", True)
    assert calls.stats().timeouts == 1 and calls.stats().errors == 2


async def test_calls_in_flight_are_bounded_and_the_rest_answered_at_once() -> None:
    release = asyncio.Event()

    async def wait(_params: dict[str, Any]) -> str:
        await release.wait()
        return "done"

    calls, engine = runner(ClientTools({"wait": wait}, config=ToolConfig(max_in_flight=2)))
    for i in range(4):
        calls.call(call("wait", f"tc_{i}"))
    calls.call(call("wait", "tc_0"))  # a repeat of a call in flight: that call answers the id, once
    await engine.until(2)
    assert sorted(engine.results) == [("tc_2", "Client tool wait was not run: too many tool calls in progress", True),
                                      ("tc_3", "Client tool wait was not run: too many tool calls in progress", True)]
    assert calls.stats().in_flight == 2 and calls.stats().rejected == 3
    release.set()
    await engine.until(4)
    await asyncio.sleep(0.02)
    assert len(engine.results) == 4
    assert sorted(engine.results)[:2] == [("tc_0", "done", False), ("tc_1", "done", False)]
    assert calls.stats().in_flight == 0


async def test_a_new_conversation_or_close_cancels_the_calls_in_flight() -> None:
    cancelled: list[str] = []

    async def wait(params: dict[str, Any]) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(params["n"])
            raise
        return ""

    calls, engine = runner(ClientTools({"wait": wait}))
    calls.call(call("wait", "a", n="a"))
    await asyncio.sleep(0.01)
    calls.new_conversation()
    calls.call(call("wait", "b", n="b"))
    await asyncio.sleep(0.01)
    await calls.close()
    calls.call(call("wait", "c", n="c"))  # after close: not run
    await asyncio.sleep(0.01)
    assert cancelled == ["a", "b"] and engine.results == []
    assert calls.stats().abandoned == 2 and calls.stats().in_flight == 0


async def test_a_result_with_no_conversation_is_counted() -> None:
    async def ok(_params: dict[str, Any]) -> str:
        return "ok"

    calls, engine = runner(ClientTools({"ok": ok}))
    engine.ready = False
    calls.call(call("ok", "tc"))
    await asyncio.sleep(0.05)
    assert calls.stats().undelivered == 1 and calls.stats().local == 1


async def test_close_does_not_wait_for_a_handler_that_ignores_cancellation() -> None:
    done = asyncio.Event()
    finished: list[bool] = []

    async def stubborn(_params: dict[str, Any]) -> str:
        while not done.is_set():
            try:
                await done.wait()
            except asyncio.CancelledError:
                continue  # a badly written handler
        finished.append(True)
        return "late"

    calls, engine = runner(ClientTools({"stubborn": stubborn}))
    calls.call(call("stubborn", "s"))
    await asyncio.sleep(0.01)
    started = asyncio.get_running_loop().time()
    await calls.close(grace_s=0.2)
    assert 0.15 < asyncio.get_running_loop().time() - started < 1.0
    assert engine.results == [] and calls.stats().abandoned == 1
    done.set()  # it finishes after all: its answer must not reach the engine (a later conversation's)
    await asyncio.sleep(0.05)
    assert finished == [True] and engine.results == []
