"""Headless Debian chromium driven over the Chrome DevTools Protocol, with nothing but ``websockets``.

One browser process per :class:`Chromium`, a fresh profile directory, a fake microphone playing a WAV file
in a loop, and no network use of its own (background networking, sync, component updates and QUIC off).
Pages are CDP targets attached in "flat" mode, so one socket carries every session's commands and events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import re
import shutil
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

__all__ = ["CdpError", "Chromium", "Page", "find_chromium"]

log = logging.getLogger(__name__)

_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-default-browser-check", "--disable-dev-shm-usage", "--disable-extensions",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
)


class CdpError(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """``async with Chromium(binary, profile_dir, fake_audio=wav) as browser: page = await browser.new_page()``."""

    def __init__(self, binary: str, profile_dir: Path, *, fake_audio: Path | None = None,
                 extra_flags: tuple[str, ...] = ()) -> None:
        self.binary, self.profile_dir = binary, profile_dir
        self.flags = [*FLAGS, f"--user-data-dir={profile_dir}", *extra_flags]
        if fake_audio is not None:
            self.flags.append(f"--use-file-for-fake-audio-capture={fake_audio}")
        self.stderr_tail: deque[str] = deque(maxlen=200)
        self._proc: asyncio.subprocess.Process | None = None
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Chromium:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, timeout: float = 30.0) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            self.binary, *self.flags, "about:blank", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True)
        assert self._proc.stderr is not None
        url = None
        async with asyncio.timeout(timeout):
            while url is None:
                line = (await self._proc.stderr.readline()).decode(errors="replace")
                if not line:
                    raise CdpError(f"chromium exited before DevTools came up:\n{self.tail()}")
                self.stderr_tail.append(line.rstrip())
                if match := _LISTENING.search(line):
                    url = match.group(1)
        self._tasks.append(asyncio.ensure_future(self._drain_stderr()))
        self._ws = await connect(url, max_size=None, proxy=None, ping_interval=None)
        self._tasks.append(asyncio.ensure_future(self._read()))

    def tail(self, lines: int = 40) -> str:
        return "\n".join(list(self.stderr_tail)[-lines:])

    async def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            self.stderr_tail.append(line.decode(errors="replace").rstrip())

    async def _read(self) -> None:
        assert self._ws is not None
        async for raw in self._ws:
            message = json.loads(raw)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future is not None and not future.done():
                    if "error" in message:
                        future.set_exception(CdpError(json.dumps(message["error"])))
                    else:
                        future.set_result(message.get("result", {}))
            else:
                for listener in list(self._listeners):
                    listener(message)

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
                   timeout: float = 30.0) -> dict[str, Any]:
        if self._ws is None:
            raise CdpError("browser not started")
        message_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send(json.dumps(message))
        return await asyncio.wait_for(future, timeout)

    def listen(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.append(listener)

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.enable()
        return page

    async def stop(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send("Browser.close"), 5)
            await self._ws.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._proc is not None and self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()


class Page:
    """One tab. Console lines and uncaught exceptions are collected for failure messages."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser, self.session = browser, session
        self.console: deque[str] = deque(maxlen=300)
        self.exceptions: list[str] = []
        browser.listen(self._on_event)

    def _on_event(self, message: dict[str, Any]) -> None:
        if message.get("sessionId") != self.session:
            return
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            self.console.append(f"{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.exceptions.append(str(details.get("exception", {}).get("description") or details.get("text")))

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, session=self.session)

    async def enable(self) -> None:
        await self.send("Page.enable")
        await self.send("Runtime.enable")

    async def navigate(self, url: str, timeout: float = 30.0) -> None:
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"navigation to {url} failed: {result['errorText']}")
        await self.wait_for("document.readyState === 'complete'", timeout=timeout)

    async def evaluate(self, expression: str, *, user_gesture: bool = False) -> Any:
        result = await self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
            "userGesture": user_gesture})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(f"{expression!r} threw: "
                           f"{details.get('exception', {}).get('description') or details.get('text')}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, *, timeout: float = 30.0, interval: float = 0.2) -> Any:
        """Until ``expression`` is truthy in the page; returns its value."""
        async with asyncio.timeout(timeout):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await asyncio.sleep(interval)

    async def screenshot(self, path: Path) -> Path:
        result = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    def diagnostics(self) -> str:
        return ("console:\n  " + "\n  ".join(list(self.console)[-60:]) +
                "\nexceptions:\n  " + "\n  ".join(self.exceptions[-20:]) +
                "\nchromium stderr:\n" + self.browser.tail(30))
