"""Who may have a LiveKit token, for which room, under which identity: the token server's authorization.

A token is a seat in a room *and* a billed conversation (the first token of a room dispatches the bridge),
so the token server never mints one on the strength of the request alone. An :data:`Authorizer` looks at
the request (headers, peer address) and the parameters it carried and answers either a :class:`Grant`
(room, identity, metadata, and the principal the rate limit counts against) or a :class:`Refusal`
(HTTP status and a message safe to show the user). Embedders pass their own; the command line offers
three:

- :func:`shared_secret` — ``Authorization: Bearer <secret>``; the caller picks the room, the identity is
  made here (``user-<random>``); the principal is the peer address.
- :func:`hs256_jwt` — ``Authorization: Bearer <JWT>`` signed HS256 with a secret shared with your own login
  service; ``sub`` becomes the identity (``user-<sub>``), a ``room`` claim, when present, pins the room;
  ``exp`` is required. The principal is ``sub``.
- :func:`dev_open` — today's open mode for a laptop: room and identity as asked. Only on a loopback
  address (:class:`~transport.token_server.TokenServer` refuses to bind it elsewhere), and loudly logged.

Whatever the authorizer answers, identities of the bridge itself (``agent-…``, ``elevenlabs-agent``, see
:data:`RESERVED_PREFIXES`) are refused: LiveKit removes the older of two participants with one identity, so
handing a caller the agent's identity would throw the agent out of its room.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

import jwt as pyjwt
from aiohttp import web

from core.errors import ConfigError

__all__ = ["RESERVED_PREFIXES", "Authorizer", "Grant", "RateLimiter", "Refusal", "dev_open", "hs256_jwt",
           "is_reserved", "shared_secret"]

log = logging.getLogger(__name__)

# The worker's job identities are "agent-<job id>" (worker_protocol.identity_prefix); runner.py --room joins
# as "elevenlabs-agent". Prefix match, case-insensitive: LiveKit identities are case-sensitive, but a
# look-alike is no more welcome.
RESERVED_PREFIXES: Final = ("agent-", "elevenlabs-agent")


def is_reserved(identity: str, reserved: tuple[str, ...] = RESERVED_PREFIXES) -> bool:
    return identity.lower().startswith(tuple(p.lower() for p in reserved))


@dataclass(frozen=True)
class Grant:
    room: str
    identity: str
    principal: str  # what the rate limit counts against: a user id, a client address
    metadata: str = ""  # participant metadata for the token (empty: none)


@dataclass(frozen=True)
class Refusal:
    status: int  # 401 no/bad credentials, 403 not allowed, 400 bad request
    message: str  # shown to the user: never a secret, never why a signature failed in detail


Authorizer = Callable[[web.Request, Mapping[str, object]], Awaitable[Grant | Refusal]]


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _peer(request: web.Request) -> str:
    return request.remote or "unknown"


def _str(params: Mapping[str, object], key: str) -> str | None:
    value = params.get(key)
    return value if isinstance(value, str) and value else None


def dev_open() -> Authorizer:
    """Room and identity exactly as asked (validated by the server); principal = peer address."""
    async def authorize(request: web.Request, params: Mapping[str, object]) -> Grant | Refusal:
        room, identity = _str(params, "room"), _str(params, "identity")
        if room is None:
            return Refusal(400, "'room' is required")
        if identity is None:
            return Refusal(400, "'identity' is required")
        return Grant(room=room, identity=identity, principal=_peer(request))
    authorize.dev_open = True  # type: ignore[attr-defined]  # TokenServer binds it to loopback only
    return authorize


def is_dev_open(authorizer: Authorizer) -> bool:
    return bool(getattr(authorizer, "dev_open", False))


def shared_secret(secret: str) -> Authorizer:
    """``Authorization: Bearer <secret>``; the room as asked, the identity made here."""
    if len(secret) < 16:
        raise ConfigError("the token server's shared secret must be at least 16 characters")
    expected = secret.encode()

    async def authorize(request: web.Request, params: Mapping[str, object]) -> Grant | Refusal:
        presented = _bearer(request)
        if presented is None or not hmac.compare_digest(presented.encode(), expected):
            return Refusal(401, "missing or wrong access key")
        room = _str(params, "room")
        if room is None:
            return Refusal(400, "'room' is required")
        return Grant(room=room, identity=f"user-{secrets.token_hex(6)}", principal=_peer(request))
    return authorize


def hs256_jwt(secret: str, *, audience: str | None = None, leeway_s: float = 10.0) -> Authorizer:
    """``Authorization: Bearer <JWT>`` (HS256, ``exp`` and ``sub`` required, optional ``room`` and ``aud``)."""
    if len(secret) < 32:
        raise ConfigError("the token server's JWT secret must be at least 32 characters (HS256)")

    async def authorize(request: web.Request, params: Mapping[str, object]) -> Grant | Refusal:
        presented = _bearer(request)
        if presented is None:
            return Refusal(401, "missing access token")
        try:
            claims = pyjwt.decode(presented, secret, algorithms=["HS256"], audience=audience, leeway=leeway_s,
                                  options={"require": ["exp", "sub"], "verify_aud": audience is not None})
        except pyjwt.PyJWTError:
            return Refusal(401, "invalid or expired access token")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            return Refusal(401, "invalid or expired access token")
        pinned = claims.get("room")
        asked = _str(params, "room")
        if isinstance(pinned, str) and pinned:
            if asked is not None and asked != pinned:
                return Refusal(403, "this access token is for another room")
            room = pinned
        elif asked is None:
            return Refusal(400, "'room' is required")
        else:
            room = asked
        return Grant(room=room, identity=f"user-{sub}", principal=f"sub:{sub}")
    return authorize


class RateLimiter:
    """A token bucket per principal: ``burst`` at once, then ``per_minute``; pure, ``now_s`` passed in.

    Buckets that have refilled are forgotten, so the table stays as large as the set of recently active
    principals (bounded by ``max_principals``: past it, the fullest buckets go first — they hold no debt).
    """

    def __init__(self, per_minute: float, burst: int, *, max_principals: int = 10_000) -> None:
        if per_minute <= 0 or burst < 1 or max_principals < 1:
            raise ConfigError("rate limit needs per_minute > 0, burst >= 1, max_principals >= 1")
        self.rate_per_s, self.burst, self.max_principals = per_minute / 60.0, burst, max_principals
        self._buckets: dict[str, tuple[float, float]] = {}  # principal -> (tokens, at)

    def allow(self, principal: str, now_s: float) -> float:
        """0.0 if allowed (one token taken), else the seconds until the next token."""
        tokens, at = self._buckets.get(principal, (float(self.burst), now_s))
        tokens = min(float(self.burst), tokens + max(0.0, now_s - at) * self.rate_per_s)
        if tokens < 1.0:
            self._buckets[principal] = (tokens, now_s)
            return (1.0 - tokens) / self.rate_per_s
        self._buckets[principal] = (tokens - 1.0, now_s)
        if len(self._buckets) > self.max_principals:
            self._evict(now_s)
        return 0.0

    def _evict(self, now_s: float) -> None:
        def level(item: tuple[str, tuple[float, float]]) -> float:
            tokens, at = item[1]
            return tokens + (now_s - at) * self.rate_per_s
        for principal, _ in sorted(self._buckets.items(), key=level, reverse=True):
            if len(self._buckets) <= self.max_principals:
                break
            del self._buckets[principal]


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
