"""Start and stop Debian's ``redis-server`` on loopback: the bus two livekit-server nodes form a cluster over.

Loopback only (``--bind 127.0.0.1``, protected mode on), a free port of its own, no persistence (no RDB
snapshots, no AOF): a test bed's cluster state is thrown away with the process. Installed by ``make redis``
(Debian's package, like chromium); ``REDIS_SERVER_BIN`` points at another binary.

    python -m scripts.redis_server run --port 6390   # foreground until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from scripts.livekit_server import hold_until_interrupted, stop_process
from scripts.ports import free_tcp_port

__all__ = ["RedisServer", "RedisServerError"]


class RedisServerError(RuntimeError):
    """redis-server is missing or did not come up; the message says why."""


def _ping(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")
    return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 with a port of its own and nothing written to disk."""

    def __init__(self, *, port: int | None = None, log_dir: Path | None = None) -> None:
        self._port = port
        self._log_dir = log_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
        if binary is None:
            raise RedisServerError("redis-server is not installed (`make redis`, or apt-get install redis-server)")
        self.port = self._port or free_tcp_port()
        log_dir = self._log_dir or Path(tempfile.mkdtemp(prefix="redis-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"redis-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "yes",
                 "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(log_dir),
                 "--logfile", ""],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RedisServerError(f"redis-server exited with {self._proc.returncode}: {self.tail_log()}")
            if _ping(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on {self.address} in {timeout:.0f} s")

    def tail_log(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, timeout)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.redis_server", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run redis-server in the foreground on loopback")
    run.add_argument("--port", type=int, default=6390)
    args = parser.parse_args(argv)
    try:
        with RedisServer(port=args.port, log_dir=Path(tempfile.gettempdir())) as server:
            print(f"redis-server on {server.address} (no persistence); Ctrl-C stops it", flush=True)
            hold_until_interrupted(lambda: server.running)
        return 0
    except RedisServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
