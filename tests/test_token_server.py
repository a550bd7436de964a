"""The token endpoint: validation (never a 500), the dispatch in the token's claims, no secret in any answer.

The server runs on its own event loop in a thread, so hypothesis can drive it with plain blocking HTTP
requests, many examples against one server.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import jwt as pyjwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livekit import api

from core.errors import ConfigError
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from transport.token_auth import RateLimiter
from transport.token_server import (
    NAME_PATTERN,
    TokenServer,
    TokenServerConfig,
    dev_open,
    hs256_jwt,
    main,
    shared_secret,
    validate_name,
)

AGENT = "elevenlabs-bridge"
LK_URL = "ws://127.0.0.1:7880"


class Running:
    def __init__(self, config: TokenServerConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = TokenServer(config)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            conn.request(method, target, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    # Open dev mode, with a rate limit wide enough for hypothesis (the limit has its own tests below).
    config = TokenServerConfig(livekit_url=LK_URL, api_key=TEST_API_KEY, api_secret=TEST_API_SECRET,
                               agent_name=AGENT, dispatch_metadata='{"source": "web"}', authorize=dev_open(),
                               rate_per_minute=1e6, rate_burst=10**6)
    with Running(config) as running:
        yield running


def claims(token: str) -> api.access_token.Claims:
    return api.TokenVerifier(TEST_API_KEY, TEST_API_SECRET).verify(token)


def assert_no_secret(body: bytes) -> None:
    assert TEST_API_SECRET.encode() not in body


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_token_carries_the_room_identity_and_the_agent_dispatch(served: Running, method: str) -> None:
    before = time.time()
    status, headers, body = served.request(method, "/token?" + urlencode({"room": "room-1", "identity": "alice"}))
    assert status == 200, body
    assert headers["cache-control"] == "no-store"
    assert_no_secret(body)
    answer = json.loads(body)
    assert {k: answer[k] for k in ("url", "room", "identity")} == {"url": LK_URL, "room": "room-1",
                                                                   "identity": "alice"}
    c = claims(answer["token"])
    assert c.identity == "alice" and c.video is not None
    assert (c.video.room, c.video.room_join, c.video.can_publish, c.video.can_subscribe) == \
        ("room-1", True, True, True)
    assert c.room_config is not None
    (dispatch,) = c.room_config.agents
    assert (dispatch.agent_name, dispatch.metadata) == (AGENT, '{"source": "web"}')
    # Short-lived: a browser fetches a new one for every join.
    exp = pyjwt.decode(answer["token"], options={"verify_signature": False})["exp"]
    assert before + 60 < exp <= time.time() + datetime.timedelta(minutes=2).total_seconds() + 5


def test_post_accepts_json_and_form_bodies(served: Running) -> None:
    status, _, body = served.request("POST", "/token", json.dumps({"room": "r.2", "identity": "bob_1"}).encode(),
                                     {"Content-Type": "application/json"})
    assert status == 200 and json.loads(body)["identity"] == "bob_1"
    status, _, body = served.request("POST", "/token", b"room=r-3&identity=carol",
                                     {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and claims(json.loads(body)["token"]).video.room == "r-3"  # type: ignore[union-attr]


@pytest.mark.parametrize(("query", "message"), [
    ("", "'room' is required"),
    ("room=a", "'identity' is required"),
    ("room=a%20b&identity=x", "'room' must be 1-64 characters"),
    ("room=a&identity=" + "x" * 65, "'identity' must be 1-64 characters"),
    ("room=a&identity=%C3%A9", "'identity' must be 1-64 characters"),
    ("room=..%2F..&identity=x", "'room' must be 1-64 characters"),
])
def test_bad_names_get_a_400_that_says_why(served: Running, query: str, message: str) -> None:
    status, _, body = served.request("GET", "/token?" + query)
    assert status == 400
    assert message in json.loads(body)["error"]


def test_bad_bodies_get_a_400(served: Running) -> None:
    for body, ctype in [(b"{not json", "application/json"), (b"[1, 2]", "application/json"),
                        (b'{"room": 5, "identity": "x"}', "application/json"), (b"x" * 5000, "application/json"),
                        (b"\xff\xfe", "application/x-www-form-urlencoded"), (b"room=a", "text/plain")]:
        status, _, answer = served.request("POST", "/token", body, {"Content-Type": ctype})
        assert status in (400, 413), (body[:20], status, answer)


def test_only_get_and_post(served: Running) -> None:
    assert served.request("DELETE", "/token?room=a&identity=b")[0] == 405


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(room=st.text(max_size=80), identity=st.text(max_size=80), as_json=st.booleans())
def test_any_input_is_a_200_or_a_400_never_a_500(served: Running, room: str, identity: str,
                                                 as_json: bool) -> None:
    if as_json:
        status, _, body = served.request("POST", "/token", json.dumps({"room": room, "identity": identity}).encode(),
                                         {"Content-Type": "application/json"})
    else:
        target = f"/token?room={quote(room, safe='')}&identity={quote(identity, safe='')}"
        status, _, body = served.request("GET", target)
    valid = bool(NAME_PATTERN.fullmatch(room)) and bool(NAME_PATTERN.fullmatch(identity))
    assert status == (200 if valid else 400), body
    assert_no_secret(body)
    if valid:
        c = claims(json.loads(body)["token"])
        assert (c.identity, c.video.room) == (identity, room)  # type: ignore[union-attr]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=60))
def test_raw_query_bytes_never_cause_a_500(served: Running, raw: bytes) -> None:
    # Arbitrary percent-encoded bytes, invalid UTF-8 included.
    target = "/token?room=" + "".join(f"%{b:02X}" for b in raw) + "&identity=someone"
    status, _, _ = served.request("GET", target)
    assert status in (200, 400)


def test_the_page_and_the_sdk_are_served(served: Running) -> None:
    status, headers, body = served.request("GET", "/")
    assert status == 200 and b'src="/vendor/livekit-client.umd.js"' in body
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    status, headers, body = served.request("GET", "/app.js")
    assert status == 200 and b"lk.transcription" in body and headers["content-type"].startswith("text/javascript")
    sdk = Path(__file__).resolve().parent.parent / "web/node_modules/livekit-client/dist/livekit-client.umd.js"
    status, _, body = served.request("GET", "/vendor/livekit-client.umd.js")
    if sdk.is_file():
        assert status == 200 and b"LivekitClient" in body[:2000]
    else:
        assert status == 404 and b"npm ci --prefix web" in body
    assert served.request("GET", "/../transport/token_server.py")[0] == 404
    assert served.request("GET", "/healthz")[0] == 200


@given(st.text(max_size=70))
def test_validate_name_matches_the_pattern(value: str) -> None:
    try:
        assert validate_name("room", value) == value
        ok = True
    except ValueError:
        ok = False
    assert ok == bool(NAME_PATTERN.fullmatch(value))


def test_config_refuses_missing_secrets_and_bad_agent_names() -> None:
    with pytest.raises(ConfigError):
        TokenServerConfig(livekit_url=LK_URL, api_key="k", api_secret="", agent_name=AGENT, authorize=dev_open())
    with pytest.raises(ConfigError):
        TokenServerConfig(livekit_url=LK_URL, api_key="k", api_secret="s", agent_name="bad name",
                          authorize=dev_open())
    config = TokenServerConfig(livekit_url=LK_URL, api_key="k", api_secret="s3cret-value", agent_name=AGENT,
                               authorize=dev_open())
    assert "s3cret-value" not in repr(config)


# ------------------------------------------------------------------------------------------ authorization

SHARED = "shared-secret-for-tests-0123456789"
JWT_KEY = "jwt-hs256-key-for-tests-0123456789abcdef"


def configured(**overrides: object) -> TokenServerConfig:
    values: dict[str, object] = {"livekit_url": LK_URL, "api_key": TEST_API_KEY, "api_secret": TEST_API_SECRET,
                                 "agent_name": AGENT, "authorize": dev_open()}
    values.update(overrides)
    return TokenServerConfig(**values)  # type: ignore[arg-type]


def test_a_config_without_an_authorizer_is_refused() -> None:
    # Nothing is open by omission: before, the server minted a token for anyone who asked.
    with pytest.raises(ConfigError, match="authorizer"):
        TokenServerConfig(livekit_url=LK_URL, api_key="k", api_secret="s", agent_name=AGENT)


@pytest.mark.parametrize("identity", ["agent-AJ_abc123", "elevenlabs-agent", "Agent-x", "elevenlabs-agent-2"])
def test_the_agents_identities_are_reserved(served: Running, identity: str) -> None:
    # The worker joins as agent-<job id>, runner.py --room as elevenlabs-agent: a caller holding one of those
    # identities would make LiveKit remove the real agent from its room.
    status, _, body = served.request("GET", "/token?" + urlencode({"room": "r", "identity": identity}))
    assert status == 403, body
    assert "reserved" in json.loads(body)["error"]


def test_shared_secret_mode_wants_the_key_and_derives_the_identity() -> None:
    with Running(configured(authorize=shared_secret(SHARED))) as running:
        query = "/token?" + urlencode({"room": "sr", "identity": "elevenlabs-agent"})
        assert running.request("GET", query)[0] == 401
        assert running.request("GET", query, headers={"Authorization": "Bearer wrong-key-0123456789"})[0] == 401
        status, _, body = running.request("GET", query, headers={"Authorization": f"Bearer {SHARED}"})
        assert status == 200, body
        answer = json.loads(body)
        # The identity is made by the server, whatever was asked for.
        assert answer["room"] == "sr" and answer["identity"].startswith("user-")
        assert claims(answer["token"]).identity == answer["identity"]
        assert SHARED.encode() not in body


def jwt_for(**claims_: object) -> str:
    payload: dict[str, object] = {"sub": "u42", "exp": int(time.time()) + 60}
    payload.update(claims_)
    return pyjwt.encode(payload, JWT_KEY, algorithm="HS256")


def test_jwt_mode_takes_the_user_and_room_from_the_signed_claims() -> None:
    with Running(configured(authorize=hs256_jwt(JWT_KEY))) as running:
        def ask(query: dict[str, str], token: str | None) -> tuple[int, dict[str, object]]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            status, _, body = running.request("GET", "/token?" + urlencode(query), headers=headers)
            return status, json.loads(body)

        status, answer = ask({"room": "free"}, jwt_for())
        assert status == 200 and (answer["room"], answer["identity"]) == ("free", "user-u42")
        status, answer = ask({}, jwt_for(room="pinned"))
        assert status == 200 and answer["room"] == "pinned"
        assert ask({"room": "other"}, jwt_for(room="pinned"))[0] == 403
        assert ask({"room": "r"}, None)[0] == 401
        assert ask({"room": "r"}, jwt_for(exp=int(time.time()) - 120))[0] == 401  # expired
        assert ask({"room": "r"}, pyjwt.encode({"sub": "u", "exp": int(time.time()) + 60}, "another-key" * 4,
                                              algorithm="HS256"))[0] == 401
        unsigned = pyjwt.encode({"sub": "u", "exp": int(time.time()) + 60}, None, algorithm="none")
        assert ask({"room": "r"}, unsigned)[0] == 401
        assert ask({"room": "r"}, jwt_for(sub="x" * 80))[0] == 400  # an identity too long is refused


def test_each_principal_is_rate_limited() -> None:
    with Running(configured(rate_per_minute=1.0, rate_burst=2)) as running:
        def ask(identity: str) -> tuple[int, dict[str, str]]:
            status, headers, _ = running.request("GET", "/token?" + urlencode({"room": "rl", "identity": identity}))
            return status, headers
        assert [ask(f"u{i}")[0] for i in range(2)] == [200, 200]
        status, headers = ask("u3")
        assert status == 429 and 1 <= int(headers["retry-after"]) <= 60


def test_rate_limiter_refills_and_forgets() -> None:
    limiter = RateLimiter(per_minute=60.0, burst=2, max_principals=2)
    assert limiter.allow("a", 100.0) == 0.0
    assert limiter.allow("a", 100.0) == 0.0
    assert limiter.allow("a", 100.0) == pytest.approx(1.0)
    assert limiter.allow("a", 100.5) == pytest.approx(0.5)
    assert limiter.allow("a", 101.5) == 0.0  # refilled one token
    assert limiter.allow("b", 101.5) == 0.0 and limiter.allow("c", 101.5) == 0.0  # "b" or "c" is forgotten
    assert limiter.allow("a", 101.5) > 0.0  # the one with debt is kept


async def test_open_dev_mode_only_binds_loopback() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        await TokenServer(configured(), host="0.0.0.0").start()


def test_the_command_line_needs_a_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKEN_SERVER_SECRET", raising=False)
    assert main(["--port", "0"]) == 2  # neither --auth nor --dev: refused, not open
    assert main(["--dev", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert main(["--auth", "shared-secret", "--port", "0"]) == 2  # the secret is not set
