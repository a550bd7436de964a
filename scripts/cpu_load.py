"""Run a command while every core is kept busy: the suite as it runs on a shared CI runner.

``python -m scripts.cpu_load [--duty 0.8] [--workers N] -- COMMAND ...`` starts ``N`` worker processes (default:
one per core) that each spin for ``duty`` of every 10 ms and sleep for the rest, runs ``COMMAND``, stops the
workers and exits with the command's status. The load is bounded three ways, so it can never outlive the
run: in time (``--max-seconds``, default 1 h), by the parent (each worker exits when its parent is gone), and
by the ``finally`` that terminates the workers whatever happens to the command. The workers run at normal
priority: a nice'd load would yield to the tests and prove nothing.

``make test-loaded`` is ``make test`` under this load.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time

SLICE_S = 0.010


def _spin(duty: float, max_seconds: float, parent: int) -> None:
    end = time.monotonic() + max_seconds
    busy = SLICE_S * duty
    x = 0
    while (now := time.monotonic()) < end:
        if os.getppid() != parent:  # the runner died without stopping us
            return
        stop = now + busy
        while time.monotonic() < stop:
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        if duty < 1.0:
            time.sleep(SLICE_S - busy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duty", type=float, default=0.8, help="busy fraction of each 10 ms per worker (0-1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (python -m scripts.cpu_load -- COMMAND ...)")
    if not 0.0 < args.duty <= 1.0 or args.workers < 1:
        parser.error("--duty must be in (0, 1] and --workers at least 1")
    workers = [multiprocessing.Process(target=_spin, args=(args.duty, args.max_seconds, os.getpid()), daemon=True)
               for _ in range(args.workers)]
    for w in workers:
        w.start()
    print(f"cpu_load: {args.workers} worker(s) busy {args.duty:.0%} of every 10 ms while: {' '.join(command)}",
          file=sys.stderr, flush=True)
    try:
        return subprocess.call(command)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.join(5)


if __name__ == "__main__":
    sys.exit(main())
