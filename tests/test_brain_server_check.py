"""The example brain server refuses the upgrade unless the shared secret (and, optionally, the engine's JWT)
is right; a verified caller gets through."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from examples.brain_server_check import (
    ENGINE_AUTH_HEADER,
    ENGINE_JWT_ISSUER,
    ENGINE_JWT_SUBJECT,
    engine_signature_ok,
    secret_ok,
    serve_brain,
)
from tests.brain_fixtures import until_brain_pongs
from tests.engine_fixtures import fast, raw, running

SECRET = "5f1d6c0e-brain-secret-a9b8c7"
API_KEY = "sk_test_brain_0123456789"


@contextlib.asynccontextmanager
async def brain(api_key: str | None = None) -> AsyncIterator[str]:
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve_brain(SECRET, port=0, api_key=api_key, ready=ready))
    try:
        port = await asyncio.wait_for(ready, 10)
        yield f"ws://127.0.0.1:{port}/"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def engine_jwt(key: str = API_KEY, *, exp_in: float = 300, sub: str = ENGINE_JWT_SUBJECT, **extra: object) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ENGINE_JWT_ISSUER, "sub": sub, "iat": now, "exp": now + int(exp_in), **extra},
                      hashlib.sha256(key.encode()).digest(), algorithm="HS256")


async def status_of(url: str, headers: dict[str, str]) -> int:
    try:
        async with connect(url, additional_headers=headers, proxy=None) as ws:
            await ws.send('{"type": "ping"}')
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_the_shared_secret_is_required_before_the_upgrade() -> None:
    async with brain() as url:
        assert await status_of(url, {}) == 401
        assert await status_of(url, {"X-Brain-Secret": "wrong"}) == 401
        assert await status_of(url, {"X-Brain-Secret": SECRET[:-1]}) == 401
        assert await status_of(url, {"X-Other": SECRET}) == 401
        assert await status_of(url, {"X-Brain-Secret": SECRET}) == 101


async def test_the_engine_signature_is_checked_when_a_key_is_configured() -> None:
    async with brain(api_key=API_KEY) as url:
        ok = {"X-Brain-Secret": SECRET}
        assert await status_of(url, ok) == 401  # secret alone is not enough now
        assert await status_of(url, {**ok, ENGINE_AUTH_HEADER: engine_jwt()}) == 101
        assert await status_of(url, {**ok, ENGINE_AUTH_HEADER: f"Bearer {engine_jwt()}"}) == 101
        assert await status_of(url, {**ok, ENGINE_AUTH_HEADER: engine_jwt("sk_other_key_0000")}) == 401
        assert await status_of(url, {**ok, ENGINE_AUTH_HEADER: engine_jwt(exp_in=-120)}) == 401
        assert await status_of(url, {ENGINE_AUTH_HEADER: engine_jwt()}) == 401  # signature alone neither


@pytest.mark.parametrize(("presented", "ok"), [(None, False), ("", False), ("x", False), (SECRET, True),
                                               (SECRET + " ", False), (SECRET.upper(), False)])
def test_secret_ok(presented: str | None, ok: bool) -> None:
    assert secret_ok(presented, SECRET) is ok
    assert secret_ok(presented, "") is False


def test_secret_ok_takes_any_characters() -> None:
    # hmac.compare_digest refuses non-ASCII str; the check compares bytes so any secret works.
    assert secret_ok("snow-☃-secret", "snow-☃-secret")
    assert not secret_ok("snow-☃-secreT", "snow-☃-secret")


def test_engine_signature_rejects_other_algorithms_and_subjects() -> None:
    assert engine_signature_ok(engine_jwt(), API_KEY)
    assert not engine_signature_ok(engine_jwt(sub="someone_else"), API_KEY)
    unsigned = jwt.encode({"iss": ENGINE_JWT_ISSUER, "sub": ENGINE_JWT_SUBJECT, "iat": 0, "exp": 2**31},
                          key=None, algorithm="none")
    assert not engine_signature_ok(unsigned, API_KEY)
    assert not engine_signature_ok("not a jwt", API_KEY)
    assert not engine_signature_ok(None, API_KEY)


def test_engine_signature_is_checked_as_the_sdk_checks_it() -> None:
    # The SDK ignores claims it does not know (PyJWT alone would refuse an unexpected ``aud``) and signs a
    # data-residency key with its base key.
    assert engine_signature_ok(engine_jwt(aud="anything"), API_KEY)
    assert engine_signature_ok(engine_jwt(), API_KEY + "_residency_eu")
    assert not engine_signature_ok(engine_jwt(iss="https://elsewhere.example"), API_KEY)
    future = int(time.time()) + 600
    early = jwt.encode({"iss": ENGINE_JWT_ISSUER, "sub": ENGINE_JWT_SUBJECT, "iat": future, "exp": future + 300},
                       hashlib.sha256(API_KEY.encode()).digest(), algorithm="HS256")
    assert not engine_signature_ok(early, API_KEY)


async def test_a_verified_engine_gets_pongs() -> None:
    async with brain(api_key=API_KEY) as url, connect(
            url, additional_headers={"X-Brain-Secret": SECRET, ENGINE_AUTH_HEADER: engine_jwt()}, proxy=None) as ws:
        await ws.send('{"type": "ping"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}


async def test_the_emulator_dials_this_brain_with_its_secret_and_signature() -> None:
    """The emulator's upgrade (JWT + configured header) passes this example's gate, and it pongs."""
    async with brain(api_key=API_KEY) as url, running(fast(api_key=API_KEY, require_auth=False, brain_url=url,
                                                           brain_headers={"X-Brain-Secret": SECRET},
                                                           brain_ping_interval_s=0.1)) as emu, \
            raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        await until_brain_pongs(conversation, 2)
        assert not conversation.ended
