"""Shared fixtures: a real livekit-server for the session, and its log on failure.

In CI (``CI=true``) a server that cannot be built or started fails the tests that need it; elsewhere they
are skipped with a message that says how to get the server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from scripts.livekit_server import LiveKitServer, LiveKitServerError

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Long enough that PyJWT does not warn; recognisable so the secret-leak tests can look for it.
TEST_API_KEY = "APIbridgeTestKey"
TEST_API_SECRET = "bridge-test-secret-0123456789abcdefghijklmnop"


def need(reason: str) -> None:
    """Fail in CI, skip elsewhere: a missing dependency must never pass silently in CI."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(f"{reason}; run `make test` to build/install it")


def started_server(tmp_path_factory: pytest.TempPathFactory, name: str = "livekit") -> LiveKitServer:
    """A real livekit-server with the test keys, or a failure (CI) / skip (elsewhere) saying why not."""
    server = LiveKitServer(api_key=TEST_API_KEY, api_secret=TEST_API_SECRET, log_dir=tmp_path_factory.mktemp(name))
    try:
        server.start()
    except LiveKitServerError as exc:
        need(f"livekit-server is not available: {exc}")
    return server


@pytest.fixture(scope="session")
def livekit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    server = started_server(tmp_path_factory)
    yield server
    server.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reverse", action="store_true", default=False,
                     help="run the collected tests in reverse order (each test must stand alone)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--reverse"):
        items.reverse()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if report.failed and "livekit_server" in getattr(item, "fixturenames", ()):
        server = item.funcargs.get("livekit_server") if hasattr(item, "funcargs") else None
        if isinstance(server, LiveKitServer):
            report.sections.append(("livekit-server log (tail)", server.tail_log(60)))
    return report
