"""The player: a reply's first frame is handed to the AudioSource from the callback that brought it."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt

from core.clock import MonotonicClock
from core.downlink import Downlink, DownlinkConfig
from core.formats import parse_format
from core.signals import tone
from core.timing import StageTimer
from core.uplink import Uplink
from transport import engine_protocol as ep
from transport.observe import SessionHooks
from transport.session_core import SessionCore, WakePlayout
from transport.session_playout import Player


class Source:
    """A room's voice side: records when each capture's request was issued and how many overlap."""

    def __init__(self) -> None:
        self.issued: list[int] = []  # sizes, in the order the captures were requested
        self.in_flight = 0
        self.most_in_flight = 0

    async def send_voice(self, samples: npt.NDArray[np.int16]) -> None:
        self.issued.append(samples.size)  # the request, before the first await, as the SDK's capture_frame
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)  # the native side's confirmation
        finally:
            self.in_flight -= 1

    def clear_voice(self) -> None:
        pass


class State:
    def __init__(self) -> None:
        self.looks = 0

    def voice(self, _down: Downlink, _now: int) -> None:
        self.looks += 1


async def test_the_first_frame_is_captured_in_the_callback_and_the_player_carries_on() -> None:
    core = SessionCore(start_immediately=True, end_when_empty=False, linger_ns=0,
                       make_uplink=lambda fmt, rate: Uplink(fmt, in_rate=rate), make_downlink=Downlink)
    fmt_out = parse_format("pcm_24000")
    core.engine_event(ep.ConversationMetadata("c", parse_format("pcm_16000"), fmt_out), 0)
    source, state, timer = Source(), State(), StageTimer()
    player = Player(core, source, clock=MonotonicClock(), timer=timer, hooks=SessionHooks(),  # type: ignore[arg-type]
                    agent_state=state)  # type: ignore[arg-type]
    task = asyncio.get_running_loop().create_task(player.run())
    for _ in range(3):
        await asyncio.sleep(0)  # the player finds nothing due and waits
    assert source.issued == []
    reply = tone(440.0, 0.3, rate=24_000)
    actions = core.engine_event(ep.AgentAudio(reply.tobytes(), 1), MonotonicClock().now_ns())
    assert any(isinstance(a, WakePlayout) for a in actions)
    looks = state.looks
    player.play_now()
    # Before this callback returned, the capture of the pacer's lead (2 × 20 ms at 48 kHz) was requested.
    config = DownlinkConfig()
    frame = 48 * config.frame_ms
    lead = config.lead_frames * frame
    assert source.issued == [lead]
    assert state.looks == looks  # the agent state hears of it when the player next looks
    player.play_now()  # more audio while that capture is in flight: only a wake, never a second capture
    def played() -> bool:  # the whole reply requested, and every capture's confirmation awaited and timed
        captures = timer.summary().get("downlink.capture")
        return sum(source.issued) >= reply.size * 2 and captures is not None and captures.count == len(source.issued)

    async with asyncio.timeout(5):  # 0.3 s of reply, paced in real time (generous for a loaded machine)
        while not played():
            await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # The reply played on after the lead in whole frames (two at once when the player woke late, never more
    # than the lead), every sample once, never two captures at once.
    assert sum(source.issued) == reply.size * 2
    assert all(n % frame == 0 and n <= lead for n in source.issued[1:]), source.issued
    assert source.most_in_flight == 1 and state.looks > looks + 10
    assert timer.summary()["downlink.capture"].count == len(source.issued)


async def test_a_player_with_no_conversation_yet_captures_nothing() -> None:
    core = SessionCore(start_immediately=True, end_when_empty=False, linger_ns=0,
                       make_uplink=lambda fmt, rate: Uplink(fmt, in_rate=rate), make_downlink=Downlink)
    source, state = Source(), State()
    player = Player(core, source, clock=MonotonicClock(), timer=StageTimer(), hooks=SessionHooks(),  # type: ignore[arg-type]
                    agent_state=state)  # type: ignore[arg-type]
    player.play_now()  # not running, no downlink: nothing is captured
    assert source.issued == []
