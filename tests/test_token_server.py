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
from transport.token_server import NAME_PATTERN, TokenServer, TokenServerConfig, validate_name

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
    config = TokenServerConfig(livekit_url=LK_URL, api_key=TEST_API_KEY, api_secret=TEST_API_SECRET,
                               agent_name=AGENT, dispatch_metadata='{"source": "web"}')
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
    assert before + 60 < exp <= time.time() + datetime.timedelta(minutes=15).total_seconds() + 5


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
        TokenServerConfig(livekit_url=LK_URL, api_key="k", api_secret="", agent_name=AGENT)
    with pytest.raises(ConfigError):
        TokenServerConfig(livekit_url=LK_URL, api_key="k", api_secret="s", agent_name="bad name")
    config = TokenServerConfig(livekit_url=LK_URL, api_key="k", api_secret="s3cret-value", agent_name=AGENT)
    assert "s3cret-value" not in repr(config)
