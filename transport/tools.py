"""Client tools: the engine's ``client_tool_call`` run by a handler of yours or by a participant over LiveKit RPC.

Public API (the decisions and texts are in :mod:`transport.tools_core`)::

    tools = ClientTools(config=ToolConfig(timeout_s=5))
    tools.register("get_weather", get_weather)      # async def get_weather(params: dict) -> str | JSON | None
    session = BridgeSession(config, tools=tools)     # or session.tools.register(...) before start()

A registered handler runs as a task of its own, never on the audio path, within ``timeout_s``. A call without
one is forwarded, by default, as ``local_participant.perform_rpc(destination_identity=…, method=tool_name,
payload=<parameters as JSON>)`` to the callers in the room, one after another, until one has the method; its
answer (a string) is the result. Whatever happens the engine gets a ``client_tool_result`` with the call's id:
the result, or ``is_error: true`` with a short reason (unknown tool, timeout, too many calls in flight, the
handler's failure). A call whose ``expects_response`` is false is answered too, as the vendor's JS client
does (the engine ignores what it did not ask for). Calls of a conversation that is replaced (engine
reconnect) or of a stopping session are cancelled: the new conversation does not know their ids.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from livekit import rtc

from core.errors import ConfigError, ToolError
from transport.engine_protocol import ClientToolCall
from transport.tools_core import (
    RpcVerdict,
    ToolConfig,
    ToolRoutes,
    ToolStats,
    encode_params,
    encode_result,
    error_text,
    rpc_verdict,
)

__all__ = ["ClientTools", "PerformRpc", "ToolCalls", "ToolConfig", "ToolHandler", "ToolStats", "room_rpc"]

log = logging.getLogger(__name__)

ToolHandler = Callable[[dict[str, Any]], Awaitable[object]]
# (destination identity, method, payload, response timeout s, acknowledgement timeout s) → the answer payload;
# raises rtc.RpcError.
PerformRpc = Callable[[str, str, str, float, float], Awaitable[str]]
Reply = Callable[[str, str, bool], bool]  # (tool_call_id, result, is_error) → queued?


class ClientTools:
    """Tool handlers by name, and how calls are run. One object may serve many sessions (a worker's jobs)."""

    def __init__(self, handlers: Mapping[str, ToolHandler] | None = None, *,
                 config: ToolConfig | None = None) -> None:
        self.config = config or ToolConfig()
        self._handlers: dict[str, ToolHandler] = {}
        for name, handler in (handlers or {}).items():
            self.register(name, handler)

    def register(self, name: str, handler: ToolHandler) -> None:
        """``handler(parameters)`` answers calls of ``name``; its return value is the result (see module doc)."""
        if not name:
            raise ConfigError("a tool needs a name")
        if not callable(handler):
            raise ConfigError(f"the handler of tool {name!r} is not callable")
        self._handlers[name] = handler

    def unregister(self, name: str) -> None:
        self._handlers.pop(name, None)

    def handler(self, name: str) -> ToolHandler | None:
        return self._handlers.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._handlers)


def room_rpc(room: rtc.Room) -> PerformRpc:
    """``perform_rpc`` of the room's local participant (read at call time: it exists once connected)."""

    async def perform(destination: str, method: str, payload: str, response_timeout: float,
                      ack_timeout: float) -> str:
        return await room.local_participant.perform_rpc(
            destination_identity=destination, method=method, payload=payload,
            response_timeout=response_timeout, max_round_trip_latency=ack_timeout)

    return perform


class _Unknown(Exception):
    """No handler and no participant with the method."""


class ToolCalls:
    """One session's tool calls: each a task, at most ``max_in_flight``, every one answered."""

    def __init__(self, tools: ClientTools, *, reply: Reply, perform_rpc: PerformRpc | None,
                 callers: Callable[[], Sequence[str]]) -> None:
        self.tools = tools
        self._reply = reply
        self._perform = perform_rpc
        self._callers = callers
        self._routes = ToolRoutes(tools.config.routes)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self._generation = 0  # moves on with each conversation: a result of an older one is never sent
        self._counts = {f.name: 0 for f in fields(ToolStats)}

    def stats(self) -> ToolStats:
        return ToolStats(**{**self._counts, "in_flight": len(self._tasks)})

    def call(self, event: ClientToolCall) -> None:
        """Take one ``client_tool_call`` (from the engine reader's callback: returns at once)."""
        self._counts["calls"] += 1
        if self._closed:
            return
        if event.tool_call_id in self._tasks:  # the same call again: the one in flight answers its id
            self._counts["rejected"] += 1
            log.warning("tool call %s (%s) is already running; the repeat is ignored", event.tool_call_id,
                        event.tool_name)
            return
        if len(self._tasks) >= self.tools.config.max_in_flight:
            self._counts["rejected"] += 1
            log.warning("tool call %s (%s) refused: %d calls in flight", event.tool_call_id, event.tool_name,
                        len(self._tasks))
            self._send(event, error_text(event.tool_name, "busy"), is_error=True)
            return
        task = asyncio.get_running_loop().create_task(self._run(event), name=f"tool:{event.tool_name}")
        self._tasks[event.tool_call_id] = task
        task.add_done_callback(functools.partial(self._done, event.tool_call_id))

    def new_conversation(self) -> None:
        """The conversation was replaced: calls of the old one can no longer be answered."""
        self._generation += 1
        self._cancel_all()

    async def close(self, grace_s: float = 1.0) -> None:
        """Cancel every call in flight (no answers: the session is stopping) and wait up to ``grace_s`` for them
        to unwind: a handler that ignores cancellation must not hold up the session's teardown."""
        self._closed = True
        self._generation += 1
        tasks = self._cancel_all()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace_s)
            if pending:
                log.warning("%d tool handler(s) ignored cancellation; leaving them behind", len(pending))

    def _cancel_all(self) -> list[asyncio.Task[None]]:
        tasks = list(self._tasks.values())
        for task in tasks:
            if task.cancel():
                self._counts["abandoned"] += 1
        return tasks

    def _done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("tool call task %s crashed", task.get_name(), exc_info=task.exception())

    def _send(self, event: ClientToolCall, text: str, *, is_error: bool) -> None:
        if is_error:
            self._counts["errors"] += 1
        if not self._reply(event.tool_call_id, text, is_error):
            self._counts["undelivered"] += 1
            log.warning("tool result %s (%s) not delivered: no conversation", event.tool_call_id, event.tool_name)

    async def _run(self, event: ClientToolCall) -> None:
        generation = self._generation
        text, is_error = await self._outcome(event)
        if generation != self._generation:
            return  # a handler that ignored its cancellation finished after all: its conversation is gone
        self._send(event, text, is_error=is_error)

    async def _outcome(self, event: ClientToolCall) -> tuple[str, bool]:
        """Run the call: (the result text, is it an error)."""
        name, config = event.tool_name, self.tools.config
        started = time.monotonic()
        scope = asyncio.timeout(config.timeout_s)
        try:
            async with scope:
                handler = self.tools.handler(name)
                if handler is not None:
                    value = await handler(dict(event.parameters))
                    kind = "local"
                elif config.forward and self._perform is not None:
                    value = await self._forward(event, started + config.timeout_s)
                    kind = "forwarded"
                else:
                    raise _Unknown
                text = encode_result(name, value, max_chars=config.max_result_chars)
        except (TimeoutError, _TimedOut) as exc:
            if isinstance(exc, TimeoutError) and not scope.expired():  # the handler's own, e.g. an HTTP client's
                return self._failed(event, exc), True
            self._counts["timeouts"] += 1
            log.warning("tool call %s (%s) timed out after %.1f s", event.tool_call_id, name, config.timeout_s)
            return error_text(name, "timeout", timeout_s=config.timeout_s), True
        except _Unknown:
            self._counts["unknown"] += 1
            log.warning("tool call %s: no handler and no participant offers %r", event.tool_call_id, name)
            return error_text(name, "unknown"), True
        except ToolError as exc:
            log.warning("tool call %s (%s) failed: %s", event.tool_call_id, name, exc)
            return error_text(name, "failed", detail=str(exc)), True
        except _RpcFailed as exc:
            return exc.text, True
        except Exception as exc:
            return self._failed(event, exc), True
        self._counts[kind] += 1
        log.info("tool call %s (%s) answered in %.0f ms", event.tool_call_id, name,
                 (time.monotonic() - started) * 1000)
        return text, False

    def _failed(self, event: ClientToolCall, exc: Exception) -> str:
        """The handler's own failure: logged here in full, named by its type only to the engine."""
        log.warning("tool call %s (%s) raised", event.tool_call_id, event.tool_name, exc_info=exc)
        return error_text(event.tool_name, "exception", detail=type(exc).__name__)

    async def _forward(self, event: ClientToolCall, deadline: float) -> str:
        """Ask the callers in turn until one has the method; its answer, or the first real error."""
        assert self._perform is not None
        name = event.tool_name
        payload = encode_params(event.parameters)
        for identity in self._routes.order(name, self._callers()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _TimedOut
            self._counts["rpc_attempts"] += 1
            try:
                answer = await self._perform(identity, name, payload, remaining,
                                             min(self.tools.config.ack_timeout_s, remaining))
            except rtc.RpcError as exc:
                verdict = rpc_verdict(exc.code)
                if verdict is RpcVerdict.NEXT:
                    log.debug("tool %s: %s cannot take it (RPC %d)", name, identity, exc.code)
                    self._routes.forget(name, identity)
                    continue
                if verdict is RpcVerdict.TIMEOUT:
                    raise _TimedOut from None
                log.warning("tool call %s (%s) failed at %s: RPC error %d", event.tool_call_id, name, identity,
                            exc.code)
                self._routes.answered(name, identity)
                raise _RpcFailed(error_text(name, "rpc", detail=exc.message, code=exc.code)) from None
            self._routes.answered(name, identity)
            return answer
        raise _Unknown


class _TimedOut(Exception):
    """The participant did not answer in time (RESPONSE_TIMEOUT), or no time was left to ask the next one."""


class _RpcFailed(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
