"""The emulator process: REST and conversation WebSocket on one loopback port.

aiohttp serves both. The ``websockets`` server can answer plain GETs through ``process_request``, but it
refuses any request with a body, so the PATCH endpoints the CLI needs could not be served on the same port.

Endpoints (paths as in elevenlabs-python's generated REST client):

- ``GET /v1/convai/conversation/get-signed-url?agent_id=…`` (header ``xi-api-key``; 401 otherwise) →
  ``{"signed_url": "ws://127.0.0.1:PORT/v1/convai/conversation?agent_id=…&conversation_signature=…"}``.
- ``GET|PATCH /v1/convai/agents/{agent_id}`` and ``GET|PATCH /v1/speech-engine/{id}``: see
  :mod:`emulator.agents`.
- ``WS /v1/convai/conversation?agent_id=…&conversation_signature=…`` (``token=`` is accepted too: the docs'
  example uses it). Extra query parameters (``source``, ``version`` …) are ignored; the ``convai``
  subprotocol is selected when offered. Refusals happen at the upgrade, with an HTTP status: 401 without a
  signature for an agent that requires one, 403 for a bad, expired, reused or foreign signature, 404 for an
  unknown agent, and whatever :class:`~emulator.config.Faults` says while refusing.

Logging never shows a signature or key: aiohttp's access log (which prints request lines) is off, and our
own lines use :func:`core.redact.redact_url`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web

from core.redact import redact_url
from emulator.agents import AgentStore, PatchError
from emulator.config import EmulatorConfig, Faults, InjectKind
from emulator.conversation import Conversation
from emulator.tokens import TokenError, TokenIssuer

__all__ = ["Emulator", "Rejection"]

log = logging.getLogger(__name__)

CONVERSATION_PATH = "/v1/convai/conversation"
_SIGNATURE_PARAMS = ("conversation_signature", "token")


@dataclass(frozen=True, slots=True)
class Rejection:
    ns: int
    status: int
    reason: str
    agent_id: str | None


def _error(status: int, code: str, message: str) -> web.Response:
    # The real API wraps errors as {"detail": {...}}; the exact inner fields are not documented.
    return web.json_response({"detail": {"status": code, "message": message}}, status=status)


class Emulator:
    """``async with Emulator(EmulatorConfig(...)) as emu:`` then connect to ``emu.ws_url`` or mint URLs from
    ``emu.rest_base_url`` with ``emu.api_key``; ``await emu.next_conversation()`` gives the server side."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.config.validate()
        self.api_key = self.config.api_key or f"sk_emu_{secrets.token_hex(16)}"
        self.faults = Faults()
        self.agents = AgentStore(self.config)
        self.tokens = TokenIssuer(ttl_ns=int(self.config.token_ttl_s * 1e9),
                                  single_use=self.config.single_use_tokens)
        self.conversations: list[Conversation] = []
        # No speech recognition here: a test or the demo that knows what was said can set this to give the
        # brain real words (samples at the input rate, rate) -> text, or None for the placeholder.
        self.transcriber: Callable[[npt.NDArray[np.int16], int], str | None] | None = None
        self.rejections: list[Rejection] = []
        self.signed_urls_issued = 0
        self._handed_out = 0
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(f"{CONVERSATION_PATH}/get-signed-url", self._signed_url)
        app.router.add_get(f"{CONVERSATION_PATH}/get_signed_url", self._signed_url)  # older spelling in docs
        app.router.add_get(CONVERSATION_PATH, self._conversation)
        app.router.add_route("GET", "/v1/convai/agents/{agent_id}", self._agent)
        app.router.add_route("PATCH", "/v1/convai/agents/{agent_id}", self._agent)
        app.router.add_route("GET", "/v1/speech-engine/{agent_id}", self._speech_engine)
        app.router.add_route("PATCH", "/v1/speech-engine/{agent_id}", self._speech_engine)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        log.info("emulator listening on %s", self.rest_base_url)

    async def stop(self) -> None:
        for conversation in self.active:
            conversation.end(1001, None, "emulator stopping")
        with_timeout = [c.wait_closed(2.0) for c in self.active]
        if with_timeout:
            await asyncio.gather(*with_timeout, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # ------------------------------------------------------------------ addresses and helpers

    @property
    def _host(self) -> str:
        return f"[{self.config.host}]" if ":" in self.config.host else self.config.host

    @property
    def port(self) -> int:
        return self._port

    @property
    def ws_url(self) -> str:
        """The conversation endpoint without query (append ``?agent_id=…`` for a public agent)."""
        return f"ws://{self._host}:{self._port}{CONVERSATION_PATH}"

    @property
    def rest_base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def signed_url(self, agent_id: str | None = None) -> str:
        """Mint a signed URL directly, as the REST endpoint would."""
        agent_id = agent_id or self.config.agent_id
        self.signed_urls_issued += 1
        token = self.tokens.issue(agent_id, time.monotonic_ns())
        return f"{self.ws_url}?agent_id={agent_id}&conversation_signature={token}"

    def public_url(self, agent_id: str | None = None) -> str:
        return f"{self.ws_url}?agent_id={agent_id or self.config.agent_id}"

    @property
    def active(self) -> list[Conversation]:
        return [c for c in self.conversations if not c.ended]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def next_conversation(self, timeout: float = 10.0) -> Conversation:
        """The first accepted conversation not yet returned by this method: a queue, so a conversation
        accepted before the call is not missed."""
        async with asyncio.timeout(timeout):
            while len(self.conversations) <= self._handed_out:
                await self._changed.wait()
        self._handed_out += 1
        return self.conversations[self._handed_out - 1]

    async def wait_rejections(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.rejections) < count:
                await self._changed.wait()

    def inject_all(self, kind: InjectKind) -> None:
        for conversation in self.active:
            conversation.inject(kind)

    def stall_all(self, seconds: float) -> None:
        for conversation in self.active:
            conversation.stall(seconds)

    def drop_all(self) -> None:
        for conversation in self.active:
            conversation.drop()

    # ------------------------------------------------------------------ REST

    def _authorised(self, request: web.Request) -> bool:
        return secrets.compare_digest(request.headers.get("xi-api-key", ""), self.api_key)

    async def _signed_url(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "invalid_api_key", "Invalid API key")
        agent_id = request.query.get("agent_id", "")
        if not agent_id:
            return _error(422, "missing_agent_id", "agent_id is required")
        if self.agents.get(agent_id) is None:
            return _error(404, "agent_not_found", f"agent {agent_id} not found")
        return web.json_response({"signed_url": self.signed_url(agent_id)})

    async def _agent(self, request: web.Request) -> web.Response:
        return await self._config_endpoint(request, speech_engine=False)

    async def _speech_engine(self, request: web.Request) -> web.Response:
        return await self._config_endpoint(request, speech_engine=True)

    async def _config_endpoint(self, request: web.Request, *, speech_engine: bool) -> web.Response:
        if not self._authorised(request):
            return _error(401, "invalid_api_key", "Invalid API key")
        agent_id = request.match_info["agent_id"]
        record = self.agents.get(agent_id)
        if record is None:
            return _error(404, "agent_not_found", f"agent {agent_id} not found")
        if request.method == "PATCH":
            try:
                body: Any = await request.json()
            except (ValueError, UnicodeDecodeError):
                return _error(422, "invalid_json", "body is not JSON")
            if not isinstance(body, dict):
                return _error(422, "invalid_body", "body must be a JSON object")
            try:
                if speech_engine:
                    record.patch_speech_engine(body)
                else:
                    record.patch_agent(body)
            except PatchError as exc:
                return _error(422, "invalid_config", str(exc))
            log.info("agent %s updated (%s)", agent_id, ", ".join(sorted(body)))
        view = record.speech_engine_view() if speech_engine else record.agent_view()
        return web.json_response(view, dumps=json.dumps)

    # ------------------------------------------------------------------ the conversation socket

    def _reject(self, status: int, reason: str, agent_id: str | None) -> web.Response:
        self.rejections.append(Rejection(time.monotonic_ns(), status, reason, agent_id))
        log.warning("refused conversation for agent %s: %s (HTTP %d)", agent_id, reason, status)
        self._notify()
        return _error(status, "conversation_refused", reason)

    async def _conversation(self, request: web.Request) -> web.StreamResponse:
        agent_id = request.query.get("agent_id")
        ws = web.WebSocketResponse(protocols=("convai",), max_msg_size=self.config.max_message_bytes,
                                   autoping=True, heartbeat=None)
        if not ws.can_prepare(request).ok:
            return _error(426, "upgrade_required", "this endpoint speaks WebSocket")
        if self.faults.take_refusal():
            return self._reject(self.faults.refuse_status, "refused by fault injection", agent_id)
        if self.faults.accept_delay_s > 0:
            await asyncio.sleep(self.faults.accept_delay_s)  # a slow upgrade: the client is still connecting
        if not agent_id:
            return self._reject(400, "agent_id is required", None)
        record = self.agents.get(agent_id)
        if record is None:
            return self._reject(404, "agent not found", agent_id)
        if record.requires_auth:
            token = next((request.query[p] for p in _SIGNATURE_PARAMS if p in request.query), None)
            if not token:
                return self._reject(401, "this agent requires a signed URL", agent_id)
            try:
                self.tokens.verify(token, agent_id, time.monotonic_ns())
            except TokenError as exc:
                return self._reject(exc.status, exc.reason, agent_id)
        await ws.prepare(request)
        query = {k: v for k, v in request.query.items() if k not in _SIGNATURE_PARAMS}
        conversation = Conversation(self, ws, request.transport, record, f"conv_{secrets.token_hex(10)}", query)
        self.conversations.append(conversation)
        log.info("conversation %s accepted for agent %s via %s (%s → %s)", conversation.conversation_id,
                 agent_id, redact_url(str(request.url)), conversation.input_format, conversation.output_format)
        self._notify()
        try:
            await conversation.run()
        finally:
            self._notify()
        return ws
