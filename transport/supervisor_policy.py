"""The supervisor's decisions without I/O: exit codes, each child's reported state, and the restart policy.

:class:`ChildState` is what the supervisor knows of one child from its status pipe (see
:mod:`transport.supervisor_child` for the format); :class:`RestartPolicy` decides what a child's death means:
restart it after a :func:`~transport.backoff.full_jitter` delay (the sequence starts again once the child has
registered), give up because it keeps dying before it ever registers (:attr:`ExitCode.CRASH_LOOP`), or stop
because it refused its configuration (:attr:`ExitCode.CONFIG`: restarting cannot help). The asyncio shell,
:mod:`transport.supervisor`, owns the processes, the pipes and the sleeping.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from transport.backoff import DelayFactory

__all__ = ["ChildState", "ExitCode", "GiveUp", "Restart", "RestartPolicy", "describe_exit", "strip_options"]

FALLBACK_DELAY_S = 30.0  # a finite backoff sequence that ran out: wait this long


class ExitCode(IntEnum):
    """Why a runner process (a supervisor or one of its children) ended. See docs/DEPLOY.md for the table."""

    OK = 0  # stopped on request; every call finished within the grace (or there were none)
    ERROR = 1  # an unexpected error (the last log line says which)
    USAGE = 2  # bad command line (argparse's own code)
    CONFIG = 3  # configuration refused (ConfigError): restarting cannot help; a supervisor does not retry it
    FORCED = 4  # stopped on request, but calls were cut short: grace over, or a second SIGTERM
    CRASH_LOOP = 5  # supervisor only: a child kept dying before it ever registered; gave up

    @classmethod
    def describe(cls, code: int) -> str:
        return describe_exit(code)


def describe_exit(code: int | None) -> str:
    """A log-friendly reason for a child's exit status (``Popen.returncode`` convention: -N = signal N)."""
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    if code > 128:
        with contextlib.suppress(ValueError):
            return f"exit {code} (signal {signal.Signals(code - 128).name})"
    with contextlib.suppress(ValueError):
        return f"exit {code} ({ExitCode(code).name})"
    return f"exit {code}"


def strip_options(argv: Sequence[str], names: set[str], flags: frozenset[str] = frozenset()) -> list[str]:
    """``argv`` without the options in ``names`` (``--x V`` and ``--x=V`` forms) and their values, and
    without the value-less ``flags``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if arg in flags:
            continue
        if name in names:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


@dataclass
class ChildState:
    """One child slot as its status reports describe it; the slot outlives each process started in it."""

    index: int
    status: dict[str, Any] = field(default_factory=dict)  # the latest report of the current process
    starts: int = 0
    deaths_unregistered: int = 0  # deaths in a row of processes that had not registered
    delays: Iterator[float] | None = None  # the backoff sequence of the current run of deaths
    ever_registered: bool = False  # the current process has registered at least once

    def started(self) -> None:
        """A new process runs in this slot: nothing is known of it yet."""
        self.status = {}
        self.starts += 1

    def report(self, status: dict[str, Any]) -> bool:
        """A status line from the child; True when it is the current process's first registration."""
        first = bool(status.get("registered")) and not self.ever_registered
        if status.get("registered"):
            self.ever_registered = True
            self.deaths_unregistered = 0
            self.delays = None
        self.status = status
        return first

    @property
    def available(self) -> bool:
        """Registered with LiveKit, not draining and below ``max_jobs`` (by its latest report)."""
        s = self.status
        return bool(s.get("registered")) and not s.get("draining") and int(s.get("running", 0)) < int(
            s.get("max_jobs", 0))

    @property
    def jobs(self) -> list[dict[str, str]]:
        """The calls the latest report listed: what dies with the process."""
        return list(self.status.get("jobs", ()))


@dataclass(frozen=True, slots=True)
class Restart:
    delay_s: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    code: ExitCode  # CONFIG or CRASH_LOOP


class RestartPolicy:
    """What a child's unrequested death means (restart after a delay, or give up)."""

    def __init__(self, backoff: DelayFactory, crash_loop_limit: int) -> None:
        self._backoff = backoff
        self.crash_loop_limit = crash_loop_limit

    def died(self, child: ChildState, code: int) -> Restart | GiveUp:
        if code == ExitCode.CONFIG:
            return GiveUp(ExitCode.CONFIG)
        if not child.ever_registered or not child.status.get("registered"):
            child.deaths_unregistered += 1
        if child.deaths_unregistered >= self.crash_loop_limit:
            return GiveUp(ExitCode.CRASH_LOOP)
        child.ever_registered = False
        child.delays = child.delays or self._backoff()
        return Restart(next(child.delays, FALLBACK_DELAY_S))
