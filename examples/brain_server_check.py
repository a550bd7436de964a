"""A minimal brain server that refuses every connection without the shared secret, before the upgrade.

A Speech Engine dials its brain server (``speech_engine.ws_url``) and sends the request headers configured
for it (``speech_engine.request_headers``, set with ``python -m transport.engine_admin set-brain-secret``).
The server below checks that header *in the HTTP handshake*: a caller without the secret gets ``401`` and
never reaches the WebSocket, so it cannot cost a session, a model call or a log line's worth of work.

Two checks, the first required, the second optional:

1. The shared secret, compared in constant time (:func:`hmac.compare_digest` on bytes), so the time a wrong
   guess takes says nothing about how much of it was right. The secret comes from the environment, never
   from code, and is never logged.
2. With ``ELEVENLABS_API_KEY`` set, also the engine's own signature: the ``X-Elevenlabs-Speech-Engine-
   Authorization`` header carries an HS256 JWT whose key is the SHA-256 digest of the API key, issuer
   ``https://api.elevenlabs.io/convai/speech-engine``, subject ``convai_speech_engine_upstream`` (as verified
   by elevenlabs-python @54e5899 and 2.78.0 ``speech_engine/resource.py`` ``verify_speech_engine_jwt`` and
   ``speech_engine/server.py``). It proves the caller holds your API key's derivative, not just the header.
   Checked exactly as the SDK checks it: signature, issuer, subject, ``exp``/``iat`` with 60 s leeway, a
   ``Bearer `` prefix allowed, a ``_residency_<region>`` suffix of the key ignored, and any other claim
   (``aud`` included, which PyJWT would refuse by default) left alone.

Verified callers get a session that answers the engine's ``{"type":"ping"}`` with ``{"type":"pong"}``, as
the SDK's session does; for a real answering brain see ``examples/brain_server.py``.

Run::

    BRAIN_SECRET=$(openssl rand -hex 32) python examples/brain_server_check.py --port 3001

The same check works for an HTTP brain (a custom-LLM endpoint): call :func:`secret_ok` first in the handler,
or in a middleware, and answer 401 before reading the body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import http
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import jwt
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

log = logging.getLogger("brain_server")

SECRET_HEADER = "X-Brain-Secret"
ENGINE_AUTH_HEADER = "X-Elevenlabs-Speech-Engine-Authorization"
ENGINE_JWT_ISSUER = "https://api.elevenlabs.io/convai/speech-engine"
ENGINE_JWT_SUBJECT = "convai_speech_engine_upstream"
_RESIDENCY_SUFFIX = re.compile(r"_residency_[a-z0-9]+$")


def secret_ok(presented: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented header value with the expected secret."""
    if presented is None or not expected:
        return False
    # compare_digest on str only accepts ASCII; bytes work for any value.
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def engine_signature_ok(header: str | None, api_key: str) -> bool:
    """The engine's HS256 JWT: key SHA-256(api key), fixed issuer and subject, not expired (60 s leeway)."""
    if not header:
        return False
    token = header.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    key = hashlib.sha256(_RESIDENCY_SUFFIX.sub("", api_key.strip()).encode("utf-8")).digest()
    try:
        claims = jwt.decode(token, key, algorithms=["HS256"], issuer=ENGINE_JWT_ISSUER, leeway=60,
                            options={"require": ["exp", "iat", "iss", "sub"], "verify_aud": False})
    except jwt.PyJWTError:
        return False
    return bool(claims.get("sub") == ENGINE_JWT_SUBJECT)


def make_gate(secret: str, *, header: str = SECRET_HEADER,
              api_key: str | None = None) -> Callable[[ServerConnection, Request], Response | None]:
    """A ``process_request`` hook: ``None`` lets the upgrade go ahead, a response refuses it."""
    if not secret:
        raise ValueError("a shared secret is required")

    def gate(connection: ServerConnection, request: Request) -> Response | None:
        if not secret_ok(request.headers.get(header), secret):
            log.warning("refused %s: missing or wrong %s", connection.remote_address, header)
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "unauthorized\n")
        if api_key is not None and not engine_signature_ok(request.headers.get(ENGINE_AUTH_HEADER), api_key):
            log.warning("refused %s: bad or missing %s", connection.remote_address, ENGINE_AUTH_HEADER)
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "unauthorized\n")
        return None

    return gate


async def handle(ws: ServerConnection) -> None:
    """Only reached by verified callers. Your conversation logic goes here; this one logs and keeps the
    connection alive by answering pings."""
    log.info("engine connected from %s", ws.remote_address)
    async for message in ws:
        kind: Any = None
        if isinstance(message, str):
            try:
                kind = json.loads(message).get("type")
            except (ValueError, AttributeError):
                kind = "not JSON"
        log.info("engine sent %s", kind)
        if kind == "ping":
            await ws.send(json.dumps({"type": "pong"}))


async def serve_brain(secret: str, *, host: str = "127.0.0.1", port: int = 3001, header: str = SECRET_HEADER,
                      api_key: str | None = None, ready: asyncio.Future[int] | None = None) -> None:
    async with serve(handle, host, port, process_request=make_gate(secret, header=header, api_key=api_key)) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        log.info("brain server on ws://%s:%d/ (header %s%s)", host, bound, header,
                 ", engine signature checked" if api_key else "")
        if ready is not None:
            ready.set_result(bound)
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--header", default=SECRET_HEADER)
    args = parser.parse_args(argv)
    secret = os.environ.get("BRAIN_SECRET", "")
    if not secret:
        print("error: set BRAIN_SECRET", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_brain(secret, host=args.host, port=args.port, header=args.header,
                                api_key=os.environ.get("ELEVENLABS_API_KEY") or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
