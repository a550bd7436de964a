"""A small token endpoint and the browser page: the way a user reaches the bridge through LiveKit.

``GET|POST /token?room=R`` answers ``{"url", "token", "room", "identity"}``: a LiveKit access token whose
room configuration carries a ``RoomAgentDispatch`` for the bridge's agent name, so the room that token
creates gets the worker dispatched into it (explicit dispatch). Who gets a token, for which room and under
which identity is the configured authorizer's decision (:mod:`transport.token_auth`: a hook for embedders, a
shared secret or an HS256 JWT from the command line, or ``--dev``'s open mode on loopback only). Identities
of the bridge itself are refused whatever the authorizer says, each principal is rate limited (429 with
``Retry-After``), and tokens live two minutes (enough to join; LiveKit keeps a joined participant past its
token's expiry). The API key and secret never leave this process; ``room`` and ``identity`` must be 1-64
characters of ``[A-Za-z0-9_.-]``, or the answer is a 400 with a message that says so. ``/`` serves
``web/index.html`` and its assets, and ``/vendor/livekit-client.umd.js`` the official SDK installed by
``npm ci --prefix web``.

Command line (binds 127.0.0.1 unless told otherwise; one of the three modes is required)::

    TOKEN_SERVER_SECRET=... python -m transport.token_server --auth shared-secret --host 0.0.0.0
    TOKEN_SERVER_JWT_SECRET=... python -m transport.token_server --auth jwt --host 0.0.0.0
    python -m transport.token_server --dev          # open: any room, any identity; loopback only

reads LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET (default: a local ``livekit-server --dev`` at
ws://127.0.0.1:7880 with devkey/secret). LIVEKIT_PUBLIC_URL, when set, is the URL handed to browsers, for a
server the browser reaches under another name than this process does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.typedefs import Handler

from core.errors import ConfigError
from core.redact import Redactor, redact_url
from transport.livekit_token import mint_token
from transport.token_auth import (
    RESERVED_PREFIXES,
    Authorizer,
    Grant,
    RateLimiter,
    Refusal,
    dev_open,
    hs256_jwt,
    is_dev_open,
    is_reserved,
    retry_after,
    shared_secret,
)

__all__ = ["NAME_PATTERN", "TokenServer", "TokenServerConfig", "dev_open", "hs256_jwt", "main", "make_app",
           "shared_secret", "validate_name"]

log = logging.getLogger(__name__)

NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
WEB_ROOT: Final = Path(__file__).resolve().parent.parent / "web"
SDK_PATH: Final = Path("node_modules/livekit-client/dist/livekit-client.umd.js")
# Browsers fetch a fresh token per join; tokens only need to outlive the join itself, and LiveKit keeps a
# connected participant in the room past its token's expiry. A leaked token is worth two minutes.
TOKEN_TTL: Final = datetime.timedelta(minutes=2)
_MAX_BODY = 4096
_STATIC = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
           "/style.css": ("style.css", "text/css")}
# The page loads only its own scripts; media and signalling go to the LiveKit server it is given.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' ws: wss: http: https:; media-src 'self' blob: mediastream:; "
        "worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'")


@dataclass(frozen=True)
class TokenServerConfig:
    livekit_url: str  # what the browser connects to
    api_key: str
    api_secret: str = field(repr=False)
    agent_name: str
    # Required: who gets which token. None refuses to start, so no deployment is open by omission.
    authorize: Authorizer | None = field(default=None, repr=False)
    dispatch_metadata: str = ""
    web_root: Path = WEB_ROOT
    token_ttl: datetime.timedelta = TOKEN_TTL
    rate_per_minute: float = 6.0  # tokens per principal, after the burst
    rate_burst: int = 5
    reserved_prefixes: tuple[str, ...] = RESERVED_PREFIXES

    def __post_init__(self) -> None:
        if self.authorize is None:
            raise ConfigError("the token server needs an authorizer: token_auth.shared_secret(...), "
                              "token_auth.hs256_jwt(...), your own hook, or token_auth.dev_open() on loopback")
        if not datetime.timedelta(seconds=10) <= self.token_ttl <= datetime.timedelta(minutes=15):
            raise ConfigError("token_ttl must be between 10 s and 15 min")
        if not self.api_key or not self.api_secret:
            raise ConfigError("LiveKit API key and secret must both be set")
        if not NAME_PATTERN.fullmatch(self.agent_name):
            raise ConfigError("the agent name must be 1-64 characters of [A-Za-z0-9_.-]")
        if not self.livekit_url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ConfigError(f"LiveKit URL must be ws(s):// or http(s)://, got {redact_url(self.livekit_url)!r}")

    @classmethod
    def from_env(cls, agent_name: str, **overrides: object) -> TokenServerConfig:
        values: dict[str, object] = {
            "livekit_url": (os.environ.get("LIVEKIT_PUBLIC_URL") or os.environ.get("LIVEKIT_URL")
                            or "ws://127.0.0.1:7880"),
            "api_key": os.environ.get("LIVEKIT_API_KEY") or "devkey",
            "api_secret": os.environ.get("LIVEKIT_API_SECRET") or "secret",
            "agent_name": agent_name,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def validate_name(what: str, value: object) -> str:
    """The value if it is an acceptable room or identity; :class:`ValueError` with a user-facing message."""
    if value is None or value == "":
        raise ValueError(f"'{what}' is required")
    if not isinstance(value, str):
        raise ValueError(f"'{what}' must be a string")
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"'{what}' must be 1-64 characters of letters, digits, '_', '.' or '-'")
    return value


def _security_headers(headers: MutableMapping[str, str]) -> None:
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Content-Security-Policy", _CSP)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={"Cache-Control": "no-store"})


async def _params(request: web.Request) -> Mapping[str, object]:
    """Query parameters, overlaid by a JSON object or form body on POST."""
    params: dict[str, object] = dict(request.query)
    if request.method != "POST" or not request.can_read_body:
        return params
    if request.content_length is not None and request.content_length > _MAX_BODY:
        raise ValueError("request body too large")
    body = await request.content.read(_MAX_BODY + 1)
    if len(body) > _MAX_BODY:
        raise ValueError("request body too large")
    if not body.strip():
        return params
    if request.content_type == "application/json":
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ValueError("body is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise ValueError("JSON body must be an object")
        params.update(parsed)
    elif request.content_type == "application/x-www-form-urlencoded":
        try:
            params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            raise ValueError("form body is not valid") from None
    else:
        raise ValueError("body must be JSON or a form (or send room and identity in the query)")
    return params


def make_app(config: TokenServerConfig, *, clock: Callable[[], float] = time.monotonic) -> web.Application:
    redact = Redactor([config.api_secret])
    assert config.authorize is not None  # checked by the config
    authorize = config.authorize
    limiter = RateLimiter(config.rate_per_minute, config.rate_burst)

    def limited(principal: str) -> web.Response | None:
        wait = limiter.allow(principal, clock())
        if wait <= 0.0:
            return None
        log.warning("token rate limit hit by %r", principal)
        response = _error(429, "too many token requests: try again later")
        response.headers["Retry-After"] = retry_after(wait)
        return response

    async def token(request: web.Request) -> web.Response:
        try:
            params = await _params(request)
            for key in ("room", "identity"):
                if key in params:  # whatever the authorizer makes of them, malformed input is a 400
                    validate_name(key, params[key])
        except ValueError as exc:
            return _error(400, str(exc))
        decision = await authorize(request, params)
        if isinstance(decision, Refusal):
            # Refusals count against the peer, so guessing credentials is rate limited too.
            return limited(f"peer:{request.remote}") or _error(decision.status, decision.message)
        if not isinstance(decision, Grant):
            raise TypeError("an authorizer must return a Grant or a Refusal")
        try:
            room = validate_name("room", decision.room)
            identity = validate_name("identity", decision.identity)
        except ValueError as exc:
            return _error(400, str(exc))
        if is_reserved(identity, config.reserved_prefixes):
            log.warning("refused a token for the reserved identity %r (principal %r)", identity, decision.principal)
            return _error(403, f"the identity {identity!r} is reserved for the agent")
        refused = limited(decision.principal)
        if refused is not None:
            return refused
        jwt = mint_token(config.api_key, config.api_secret, room=room, identity=identity,
                         dispatch_agent=config.agent_name, dispatch_metadata=config.dispatch_metadata,
                         ttl=config.token_ttl, metadata=decision.metadata)
        log.info("token for %r in room %r (principal %r, dispatching %r)", identity, room, decision.principal,
                 config.agent_name)
        return web.json_response({"url": config.livekit_url, "token": jwt, "room": room, "identity": identity},
                                 headers={"Cache-Control": "no-store"})

    async def static(request: web.Request) -> web.StreamResponse:
        name, content_type = _STATIC[request.path]
        path = config.web_root / name
        if not path.is_file():
            return _error(404, f"{name} is missing from {config.web_root}")
        return web.FileResponse(path, headers={"Content-Type": f"{content_type}; charset=utf-8"})

    async def sdk(_: web.Request) -> web.StreamResponse:
        path = config.web_root / SDK_PATH
        if not path.is_file():
            return _error(404, "livekit-client is not installed: run `npm ci --prefix web`")
        return web.FileResponse(path, headers={"Content-Type": "text/javascript; charset=utf-8"})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "agent_name": config.agent_name})

    @web.middleware
    async def harden(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # 404, 405 …: aiohttp renders them; add our headers on the way
            _security_headers(exc.headers)
            raise
        except Exception as exc:  # never leak internals (or, by accident, a secret) in a 500
            log.error("token server error on %s: %s", request.path, redact(f"{type(exc).__name__}: {exc}"))
            response = _error(500, "internal error")
        _security_headers(response.headers)
        return response

    app = web.Application(middlewares=[harden], client_max_size=_MAX_BODY)
    app.router.add_route("GET", "/token", token)
    app.router.add_route("POST", "/token", token)
    for path in _STATIC:
        app.router.add_get(path, static)
    app.router.add_get("/vendor/livekit-client.umd.js", sdk)
    app.router.add_get("/healthz", health)
    return app


class TokenServer:
    """The app on a TCP port: ``async with TokenServer(config, port=0) as server: server.url``."""

    def __init__(self, config: TokenServerConfig, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config, self.host, self.port = config, host, port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> TokenServer:
        assert self.config.authorize is not None
        if is_dev_open(self.config.authorize):
            if not _is_loopback(self.host):
                raise ConfigError(f"the open (--dev) token server only binds a loopback address, not {self.host!r}: "
                                  "use --auth shared-secret or --auth jwt")
            log.warning("DEV MODE: this token server gives anyone who reaches %s a token for any room and "
                        "identity (each new room dispatches the agent and opens a billed conversation)", self.host)
        self._runner = web.AppRunner(make_app(self.config), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        for address in self._runner.addresses:
            self.port = int(address[1])
            break
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> TokenServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _authorizer_from_args(args: argparse.Namespace) -> Authorizer:
    if args.dev:
        return dev_open()
    if args.auth == "shared-secret":
        secret = os.environ.get("TOKEN_SERVER_SECRET", "")
        if not secret:
            raise ConfigError("--auth shared-secret reads the secret from TOKEN_SERVER_SECRET, which is not set")
        return shared_secret(secret)
    if args.auth == "jwt":
        secret = os.environ.get("TOKEN_SERVER_JWT_SECRET", "")
        if not secret:
            raise ConfigError("--auth jwt reads the HS256 key from TOKEN_SERVER_JWT_SECRET, which is not set")
        return hs256_jwt(secret, audience=args.jwt_audience)
    raise ConfigError("choose who may get tokens: --auth shared-secret, --auth jwt, or --dev (open, loopback only)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transport.token_server",
                                     description="LiveKit token endpoint and browser page for the bridge")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--agent-name", default="elevenlabs-bridge", help="agent name tokens dispatch")
    parser.add_argument("--dispatch-metadata", default="", help="metadata handed to each dispatched job")
    parser.add_argument("--web-root", type=Path, default=WEB_ROOT)
    parser.add_argument("--auth", choices=["shared-secret", "jwt"],
                        help="shared-secret: 'Authorization: Bearer $TOKEN_SERVER_SECRET'; jwt: an HS256 JWT "
                             "signed with $TOKEN_SERVER_JWT_SECRET (sub = user, optional room claim)")
    parser.add_argument("--jwt-audience", default=None, help="required 'aud' of --auth jwt tokens")
    parser.add_argument("--dev", action="store_true",
                        help="open mode: anyone reaching the port picks any room and identity (loopback only)")
    parser.add_argument("--rate-per-minute", type=float, default=6.0, help="tokens per principal per minute")
    parser.add_argument("--rate-burst", type=int, default=5, help="tokens a principal may take at once")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.dev and args.auth:
            raise ConfigError("--dev and --auth exclude each other")
        if args.dev and not _is_loopback(args.host):
            raise ConfigError(f"--dev only binds a loopback address, not {args.host!r}")
        config = TokenServerConfig.from_env(args.agent_name, dispatch_metadata=args.dispatch_metadata,
                                            web_root=args.web_root, authorize=_authorizer_from_args(args),
                                            rate_per_minute=args.rate_per_minute, rate_burst=args.rate_burst)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Redactor([config.api_secret]).install()

    async def serve() -> None:
        async with TokenServer(config, host=args.host, port=args.port) as server:
            mode = "DEV (open, loopback only)" if args.dev else f"auth {args.auth}"
            print(f"browser page: {server.url}/  (LiveKit {redact_url(config.livekit_url)}, "
                  f"agent {config.agent_name!r}, {mode}); Ctrl-C stops", flush=True)
            await asyncio.Event().wait()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
