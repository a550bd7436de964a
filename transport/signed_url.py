"""Where the conversation socket's URL comes from: minted per attempt from the REST API, or given.

A signed URL may only be used to *start* a conversation within 15 minutes (docs ``authentication.mdx``), and
the emulator makes them single-use, so the client asks its :data:`UrlProvider` again before every attempt.

``GET {base}/v1/convai/conversation/get-signed-url?agent_id=ID`` with header ``xi-api-key`` answers
``{"signed_url": "wss://…/v1/convai/conversation?agent_id=ID&conversation_signature=…"}``
(elevenlabs-python ``conversations/raw_client.py`` ``get_signed_url``; its docstrings name the signature
parameter ``conversation_signature`` and say ``agent_id`` takes an ``agent_…`` or a Speech Engine ``seng_…``
id). We treat the URL as opaque. The API key stays in the header and never enters a URL, a log line or an
error message; it is only sent over https (plain http to loopback only) and never along a redirect.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp

from core.errors import ConfigError, EngineAuthError, EngineError, EngineRefusedError
from core.redact import redact_url

_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def check_api_base(base_url: str) -> None:
    """The ``xi-api-key`` header only goes over https, except to this machine (the emulator, tests).

    A ConfigError otherwise: a plain-http base elsewhere would send the key in the clear."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    loopback = host in _LOOPBACK_HOSTS or host.startswith("127.")
    if parts.scheme == "https" or (parts.scheme == "http" and loopback):
        return
    raise ConfigError(f"the ElevenLabs API base must be https:// (http only for loopback), got "
                      f"{redact_url(base_url)!r}")

__all__ = ["DEFAULT_API_BASE", "UrlProvider", "api_request", "check_api_base", "fetch_signed_url",
           "signed_url_provider", "static_url"]

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.elevenlabs.io"
UrlProvider = Callable[[], Awaitable[str]]


async def api_request(method: str, url: str, api_key: str, *, where: str, timeout: float,
                      auth_hint: str, params: dict[str, str] | None = None,
                      body: object = None) -> tuple[int, bytes]:
    """One request to the ElevenLabs API with the key in ``xi-api-key``: ``(status, body)`` for the caller to
    judge, after the answers every caller treats alike. A failed request → :class:`EngineError` naming only
    the exception's type (aiohttp messages can quote request details); 401/403 → :class:`EngineAuthError`
    with ``auth_hint``; a redirect is never followed (the key would go along to wherever it points) →
    :class:`EngineError`. ``where`` names the request in errors and must hold no secret."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
                session.request(method, url, params=params, json=body, headers={"xi-api-key": api_key},
                                allow_redirects=False) as response:
            status, raw = response.status, await response.read()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise EngineError(f"{where} failed: {type(exc).__name__}") from None
    if status in (401, 403):
        raise EngineAuthError(f"{where} refused with HTTP {status}: {auth_hint}")
    if 300 <= status < 400:
        raise EngineError(f"{where} was redirected (HTTP {status}); not followed")
    return status, raw


async def fetch_signed_url(api_key: str, agent_id: str, *, base_url: str = DEFAULT_API_BASE,
                           timeout: float = 10.0) -> str:
    """Mint one signed conversation URL. 401/403 → :class:`EngineAuthError`; anything else that fails →
    :class:`EngineError`. Neither carries the key or the response body (which could echo it)."""
    if not api_key:
        raise ConfigError("an API key is needed to mint a signed URL")
    check_api_base(base_url)
    endpoint = f"{base_url.rstrip('/')}/v1/convai/conversation/get-signed-url"
    where = f"signed URL request to {redact_url(endpoint)}"
    status, body = await api_request("GET", endpoint, api_key, where=where, timeout=timeout,
                                     params={"agent_id": agent_id}, auth_hint="check API key and agent id")
    if status in (404, 422):  # unknown agent / invalid request: asking again cannot help
        raise EngineRefusedError(f"{where} answered HTTP {status}: check the agent id")
    if not 200 <= status < 300:
        raise EngineError(f"{where} answered HTTP {status}")
    try:
        url = json.loads(body)["signed_url"]
    except (ValueError, KeyError, TypeError):
        raise EngineError("signed URL response has no 'signed_url' field") from None
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
        raise EngineError("signed URL response is not a ws(s) URL")
    log.debug("minted signed URL %s", redact_url(url))
    return url


def signed_url_provider(api_key: str, agent_id: str, *, base_url: str = DEFAULT_API_BASE,
                        timeout: float = 10.0) -> UrlProvider:
    """A provider that mints a fresh signed URL on every call."""
    check_api_base(base_url)
    async def provide() -> str:
        return await fetch_signed_url(api_key, agent_id, base_url=base_url, timeout=timeout)
    return provide


def static_url(url: str) -> UrlProvider:
    """A provider that always returns ``url`` (a public agent's URL, or one signed elsewhere)."""
    if not url.startswith(("ws://", "wss://")):
        raise ConfigError(f"conversation URL must be ws:// or wss://, got {redact_url(url)}")

    async def provide() -> str:
        return url
    return provide
