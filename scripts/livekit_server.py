"""Build, start and stop a real ``livekit-server`` on loopback.

The server is the upstream Go binary, built from source at a pinned version with
``go install github.com/livekit/livekit-server/cmd/server@<version>`` and cached under
``~/.cache/lk-speech-bridge/livekit-server-<version>/server`` (``LK_BRIDGE_CACHE`` moves the cache,
``LIVEKIT_SERVER_BIN`` points at a binary of your own). A cold build took 1 min 44 s on the 2-core CI
machine, downloads included; later runs reuse the cached binary.

Each :class:`LiveKitServer` picks free ports of its own, so parallel test runs and a running demo never
collide, binds only 127.0.0.1, offers only 127.0.0.0/8 ICE candidates (loopback candidates are off by
default in the server, hence ``enable_loopback_candidate``), and runs in ``--dev`` mode with the keys it
is given (``devkey``/``secret`` by default).

libwebrtc clients never gather candidates on a loopback *interface*, so a client on a machine whose only
other address must not be used (a sandbox, CI) cannot reach this server directly. ``scripts/netns.sh``
runs the tests and the demo in a private network namespace whose second interface also carries a
127.0.0.0/8 address: every packet of a call then stays on loopback addresses.

A server outlives a process that was killed (SIGKILL, an OOM kill, a CI timeout): it runs in a session of
its own. Every server started here leaves a pidfile under ``<cache>/run/`` naming itself and the process
that started it; :func:`sweep_orphans` (called before every start, and by ``python -m scripts.livekit_server
sweep``) kills each server whose starter is gone. PR_SET_PDEATHSIG is not used: it fires when the *thread*
that forked exits, and the fault tests restart servers from executor threads.

Command line::

    python -m scripts.livekit_server build          # build (or find) the binary, print its path
    python -m scripts.livekit_server run --port 7880 # run in the foreground until Ctrl-C
    python -m scripts.livekit_server sweep          # kill servers left behind by killed runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from scripts.ports import free_tcp_port, free_udp_range, tcp_port_free

__all__ = ["SERVER_VERSION", "LiveKitServer", "LiveKitServerError", "ensure_binary"]

SERVER_VERSION = "v1.13.5"
SERVER_MODULE = "github.com/livekit/livekit-server/cmd/server"
DEV_KEY, DEV_SECRET = "devkey", "secret"
BUILD_TIMEOUT_S = 40 * 60


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` s (0: SIGKILL at once); reaps it."""
    if proc.poll() is not None:
        return
    if timeout > 0:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
            return
    proc.kill()
    proc.wait()


class LiveKitServerError(RuntimeError):
    """The server could not be built or did not come up; the message says why and what to do."""


def cache_root() -> Path:
    return Path(os.environ.get("LK_BRIDGE_CACHE") or Path.home() / ".cache" / "lk-speech-bridge")


def _run_dir() -> Path:
    return cache_root() / "run"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def sweep_orphans() -> list[int]:
    """Kill livekit-servers whose starting process has died; returns their pids."""
    killed: list[int] = []
    run_dir = _run_dir()
    if not run_dir.is_dir():
        return killed
    for pidfile in run_dir.glob("*.json"):
        try:
            record = json.loads(pidfile.read_text())
            server, owner, binary = int(record["server"]), int(record["owner"]), str(record["binary"])
        except (OSError, ValueError, KeyError, TypeError):
            pidfile.unlink(missing_ok=True)
            continue
        if _alive(owner) and _cmdline(owner):
            continue
        # The pid may have been reused since: only a process running that very binary is ours to kill.
        if _alive(server) and _cmdline(server)[:1] == [binary]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)
            killed.append(server)
        pidfile.unlink(missing_ok=True)
    return killed


def binary_path(version: str = SERVER_VERSION) -> Path:
    override = os.environ.get("LIVEKIT_SERVER_BIN")
    if override:
        return Path(override)
    return cache_root() / f"livekit-server-{version}" / "server"


def ensure_binary(version: str = SERVER_VERSION, *, build: bool = True) -> Path:
    """The cached server binary, built from source first when it is missing and ``build`` is true."""
    path = binary_path(version)
    if path.is_file() and os.access(path, os.X_OK):
        return path
    if not build or os.environ.get("LIVEKIT_SERVER_BIN"):
        raise LiveKitServerError(f"no livekit-server binary at {path}; run `make server` to build it")
    go = shutil.which("go")
    if go is None:
        raise LiveKitServerError("Go is not installed; it is needed to build livekit-server from source")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build into a scratch GOBIN and move the result in place, so an interrupted build never leaves a
    # half-written binary where the cache looks for a good one.
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        env = dict(os.environ, GOBIN=scratch)
        print(f"building livekit-server {version} from source (first time only, ~2-5 min)...", file=sys.stderr)
        started = time.monotonic()
        result = subprocess.run([go, "install", f"{SERVER_MODULE}@{version}"], env=env, cwd=scratch,
                                capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
        if result.returncode != 0:
            raise LiveKitServerError(f"`go install {SERVER_MODULE}@{version}` failed:\n{result.stderr[-4000:]}")
        os.replace(Path(scratch) / "server", path)
        print(f"built {path} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return path


class LiveKitServer:
    """One ``livekit-server --dev`` process on loopback with ports of its own."""

    def __init__(self, *, port: int | None = None, api_key: str = DEV_KEY, api_secret: str = DEV_SECRET,
                 udp_ports: int = 200, log_dir: Path | None = None, version: str = SERVER_VERSION,
                 redis: str | None = None) -> None:
        self.api_key, self.api_secret = api_key, api_secret
        # host:port of a redis-server: nodes given the same one form one cluster (scripts/redis_server.py).
        self.redis = redis
        self.version = version
        self._port = port
        self._udp_ports = udp_ports
        self._log_dir = log_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfile: Path | None = None
        self.port = 0
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self, port: int, tcp_port: int, udp_start: int) -> str:
        return "\n".join([
            f"port: {port}",
            "rtc:",
            f"  tcp_port: {tcp_port}",
            f"  port_range_start: {udp_start}",
            f"  port_range_end: {udp_start + self._udp_ports - 1}",
            "  node_ip: 127.0.0.1",
            "  use_external_ip: false",
            "  enable_loopback_candidate: true",
            # Without a STUN server of its own the server hands clients public ones (Google's, Twilio's);
            # a loopback address keeps even their lookups and binding requests on this machine.
            "  stun_servers: [\"127.0.0.1:3478\"]",
            "  ips:",
            "    includes: [127.0.0.0/8]",
            "keys:",
            f"  {self.api_key}: {self.api_secret}",
            "logging:",
            f"  level: {os.environ.get('LK_SERVER_LOG_LEVEL', 'info')}",  # debug: every signal message
            # A cluster: nodes share state over redis; a new room goes to the node hosting the fewest rooms
            # (the default sorts by system load, which on one machine is the same number for every node and
            # put every room on one node; random put all six of a test's rooms on one node 1 time in 32).
            *([f"redis:\n  address: {self.redis}", "node_selector:\n  kind: any\n  sort_by: rooms"]
              if self.redis else []),
            "",
        ])

    def start(self, timeout: float = 20.0) -> LiveKitServer:
        binary = ensure_binary(self.version)
        self.port = self._port or free_tcp_port()
        log_dir = self._log_dir or Path(tempfile.mkdtemp(prefix="livekit-server-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"livekit-server-{self.port}.log"
        config = self._config(self.port, free_tcp_port(), free_udp_range(self._udp_ports))
        for pid in sweep_orphans():
            print(f"livekit_server: killed orphaned livekit-server {pid} (its test run was killed)",
                  file=sys.stderr)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [str(binary), "--dev", "--bind", "127.0.0.1", "--config-body", config],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._pidfile = _run_dir() / f"{self._proc.pid}.json"
        with contextlib.suppress(OSError):
            self._pidfile.parent.mkdir(parents=True, exist_ok=True)
            self._pidfile.write_text(json.dumps({"server": self._proc.pid, "owner": os.getpid(),
                                                 "binary": str(binary)}))
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise LiveKitServerError(f"livekit-server exited with {self._proc.returncode}:\n{self.tail_log()}")
            with contextlib.suppress(OSError, urllib.error.URLError), \
                    urllib.request.urlopen(self.http_url, timeout=1) as response:
                if response.status == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise LiveKitServerError(f"livekit-server did not answer on {self.http_url} in {timeout:.0f} s:\n"
                                 f"{self.tail_log()}")

    def tail_log(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        # Session-start lines carry whole SDP offers; the first few hundred characters tell the story.
        return "\n".join(line if len(line) <= 400 else line[:400] + " …" for line in tail)

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (what a test that kills it needs)."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0, *, crash: bool = False) -> None:
        """SIGTERM and wait (the server drains, ~10 s with clients); ``crash``: SIGKILL, no goodbye to anyone."""
        proc, self._proc = self._proc, None
        pidfile, self._pidfile = self._pidfile, None
        if pidfile is not None:
            pidfile.unlink(missing_ok=True)
        if proc is None or proc.poll() is not None:
            return
        stop_process(proc, 0.0 if crash else timeout)

    def restart(self, timeout: float = 20.0, *, crash: bool = False) -> None:
        """Stop (or ``crash``) and start again on the same HTTP port (clients reconnect to the same URL)."""
        self.stop(crash=crash)
        self._port = self.port
        # The old process may hold its listening socket for a moment after it exits.
        deadline = time.monotonic() + 10
        while not tcp_port_free(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start(timeout)

    def __enter__(self) -> LiveKitServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def running_server(**kwargs: object) -> Iterator[LiveKitServer]:
    server = LiveKitServer(**kwargs)  # type: ignore[arg-type]
    with server:
        yield server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.livekit_server", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or find) the server binary and print its path")
    sub.add_parser("sweep", help="kill livekit-servers whose starting process was killed")
    run = sub.add_parser("run", help="run the server in the foreground on loopback")
    run.add_argument("--port", type=int, default=7880)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(ensure_binary())
            return 0
        if args.command == "sweep":
            killed = sweep_orphans()
            print(f"killed {len(killed)} orphaned livekit-server(s): {killed}" if killed else "no orphans")
            return 0
        with LiveKitServer(port=args.port, log_dir=Path(tempfile.gettempdir())) as server:
            print(f"livekit-server {SERVER_VERSION} on {server.url} (keys {server.api_key}/…); "
                  f"log: {server.log_path}; Ctrl-C stops it", flush=True)
            hold_until_interrupted(lambda: server.running)
        return 0
    except LiveKitServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def hold_until_interrupted(running: Callable[[], bool]) -> None:
    """A test-bed server's command line: keep it up until Ctrl-C or until it exits by itself."""
    with contextlib.suppress(KeyboardInterrupt):
        while running():
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
