"""One emulator, our bridge and the naive one in two rooms, and a listening caller in each (another process).

Both bridges talk to the same :class:`~emulator.Emulator` (each its own conversation), so they get the same
replies at the same pace; the callers run in :mod:`benchmarks.caller_host`, so the process being timed holds
the two bridges and the emulator only.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from benchmarks.common import LOUD_REMOTE, Progress
from benchmarks.naive import NaiveBridge
from benchmarks.procs import JsonLinesProcess
from benchmarks.taps import SessionTap
from emulator import Conversation, Emulator, EmulatorConfig
from scripts.livekit_server import LiveKitServer
from transport.config import RoomLinkConfig
from transport.livekit_token import mint_token
from transport.session import BridgeSession, EngineSettings, SessionConfig

__all__ = ["Rig", "Side"]

AGENT = "bridge-agent"


@dataclass
class Side:
    """One bridge under test, seen uniformly: its conversation, its caller and what its taps recorded."""

    name: str  # "ours" | "baseline"
    room: str
    caller: str
    conversation: Conversation
    captures: list[tuple[int, int, int]]
    clears: list[int]
    audio_events: list[tuple[int, int]]
    caller_frames: list[tuple[int, int]]
    session: BridgeSession | None = None
    naive: NaiveBridge | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def interruption_read_ns(self, after_ns: int) -> int | None:
        """When the bridge's code got the interruption sent at ``after_ns`` off the socket."""
        if self.session is not None:
            times = [i["recv_ns"] for i in self.session.interruptions]
        else:
            assert self.naive is not None
            times = [i["loop_ns"] for i in self.naive.interruptions]
        return next((t for t in times if t >= after_ns), None)


class Rig:
    def __init__(self, server: LiveKitServer, emulator: EmulatorConfig, progress: Progress, *,
                 log_dir: Path | None = None, tag: str = "bench") -> None:
        self.server, self.progress, self.log_dir = server, progress, log_dir
        self.emulator = Emulator(emulator)
        self.tag = f"{tag}-{uuid.uuid4().hex[:6]}"
        self.callers = JsonLinesProcess("benchmarks.caller_host",
                                        log_path=log_dir / "caller_host.log" if log_dir else None)
        self.ours: Side | None = None
        self.baseline: Side | None = None
        self._session: BridgeSession | None = None
        self._naive: NaiveBridge | None = None

    def token(self, room: str, identity: str, *, agent: bool = False) -> str:
        return mint_token(self.server.api_key, self.server.api_secret, room=room, identity=identity, agent=agent)

    async def __aenter__(self) -> Rig:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def _start(self) -> None:
        emu = self.emulator
        await emu.start()
        await self.callers.start()
        server = self.server

        room_ours = f"{self.tag}-ours"
        tap = SessionTap()
        engine = EngineSettings(api_key=emu.api_key, agent_id=emu.config.agent_id, api_base=emu.rest_base_url)
        link = RoomLinkConfig(server.url, self.token(room_ours, AGENT, agent=True), identity=AGENT)
        config = SessionConfig(room=link, engine=engine, start_when="immediately", end_when_empty=False)
        session = BridgeSession(config, hooks=tap.hooks())
        self._session = session
        await session.start()
        conv_ours = await emu.next_conversation()
        self.ours = Side("ours", room_ours, "caller-ours", conv_ours, tap.captures, tap.clears, tap.audio_events,
                         tap.caller_frames, session=session)

        room_naive = f"{self.tag}-naive"
        naive = NaiveBridge(server.url, self.token(room_naive, AGENT, agent=True), emu.signed_url())
        self._naive = naive
        await naive.start()
        conv_naive = await emu.next_conversation()
        self.baseline = Side("baseline", room_naive, "caller-naive", conv_naive, naive.captures, naive.clears,
                             naive.audio_events, naive.caller_frames, naive=naive)
        self.progress(f"bridges up (rooms {room_ours}, {room_naive}); joining the callers")

        specs = [{"name": side.caller, "url": server.url, "token": self.token(side.room, side.caller),
                  "listen": True, "frame_ms": 10, "lead": 2} for side in (self.ours, self.baseline)]
        joined = await self.callers.call("join", callers=specs, timeout=60)
        if joined["failed"]:
            raise RuntimeError(f"callers could not join: {joined['failed']}")
        # Until each caller receives the agent's track (silence frames flow from the moment it is subscribed)
        # and each bridge hears its caller.
        async with asyncio.timeout(30):
            while True:
                heard = [await self.callers.call("heard", name=s.caller, since=0) for s in self.sides]
                if all(h["times"] for h in heard) and all(s.caller_frames for s in self.sides):
                    break
                await asyncio.sleep(0.1)
        self.progress("callers joined, both directions flowing")

    @property
    def sides(self) -> tuple[Side, Side]:
        assert self.ours is not None and self.baseline is not None
        return self.ours, self.baseline

    async def heard(self, side: Side, since: int, until: int | None = None, *, audio: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(arrival ns, peak) per 10 ms frame the side's caller got from its agent, and the samples if asked."""
        got = await self.callers.call("heard", name=side.caller, since=since, until=until, audio=audio)
        samples = None
        if audio and "audio" in got:
            import base64
            samples = np.frombuffer(base64.b64decode(got["audio"]), dtype=np.int16)
        return np.asarray(got["times"], dtype=np.int64), np.asarray(got["peaks"], dtype=np.int64), samples

    async def spoken(self, side: Side) -> list[int]:
        return list((await self.callers.call("spoken", name=side.caller))["starts"])

    async def say(self, side: Side, seconds: float, freq: float, level: float = 0.3, lead_in_ms: float = 0.0
                  ) -> None:
        """The side's caller speaks; with ``lead_in_ms`` the voice starts that long into the utterance (its
        ``spoken`` start stays the utterance's first frame)."""
        await self.callers.call("say", name=side.caller, seconds=seconds, freq=freq, level=level,
                                lead_in_ms=lead_in_ms)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.callers.close()
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.stop()
        if self._naive is not None:
            with contextlib.suppress(Exception):
                await self._naive.stop()
        with contextlib.suppress(Exception):
            await self.emulator.stop()


def loud_after(times: np.ndarray, peaks: np.ndarray, t_ns: int, threshold: int = LOUD_REMOTE) -> int | None:
    idx = np.flatnonzero((times >= t_ns) & (peaks > threshold))
    return int(idx[0]) if idx.size else None
