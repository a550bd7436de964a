"""RoomLink against a real livekit-server: callers read at the engine's rate, and re-read at another."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from core.signals import dominant_hz
from scripts.caller import Caller, tone
from scripts.livekit_server import LiveKitServer
from tests.bridge_fixtures import unique, wait_for
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from transport.livekit_room import RoomLink, RoomLinkConfig
from transport.livekit_token import mint_token

pytestmark = pytest.mark.livekit


async def test_callers_come_at_the_rate_asked_and_switch_at_once(livekit_server: LiveKitServer) -> None:
    room = unique("rate")
    frames: list[tuple[int, npt.NDArray[np.int16]]] = []  # (rate asked when it arrived, samples)
    arrivals: list[int] = []
    link: RoomLink

    def on_audio(_identity: str, samples: npt.NDArray[np.int16], recv_ns: int) -> None:
        frames.append((link.caller_rate, samples.copy()))
        arrivals.append(recv_ns)

    token = mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity="agent-rate", agent=True)
    link = RoomLink(RoomLinkConfig(url=livekit_server.url, token=token, identity="agent-rate"),
                    on_caller_audio=on_audio, caller_rate=16_000)
    await link.connect()
    try:
        caller = Caller(livekit_server.url, mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity="c1"),
                        identity="c1")
        async with caller:
            await wait_for(lambda: "c1" in link.callers, timeout=20)
            caller.say(tone(440.0, 6.0))

            def voiced(rate: int) -> list[npt.NDArray[np.int16]]:
                return [f for r, f in frames if r == rate and np.abs(f).max() > 1000]

            await wait_for(lambda: len(voiced(16_000)) >= 50, timeout=20)
            link.set_caller_rate(24_000)
            switched_at = len(frames)
            await wait_for(lambda: len(voiced(24_000)) >= 50, timeout=20)
    finally:
        await link.close()
    # Every frame is 10 ms at the rate asked when it arrived: none of the old rate after the switch.
    assert all(f.size == r // 100 for r, f in frames), {(r, f.size) for r, f in frames}
    assert all(r == 24_000 for r, _ in frames[switched_at:])
    for rate in (16_000, 24_000):
        audio = np.concatenate(voiced(rate)[5:45])
        assert abs(dominant_hz(audio, rate) - 440.0) < 5
    # No hole in the caller's voice at the switch: the new stream's first frame follows the old stream's last
    # at once (10 ms apart on a quiet machine; the bound is for a loaded one, whose loop may stall), voiced.
    gap_ms = (arrivals[switched_at] - arrivals[switched_at - 1]) / 1e6
    assert gap_ms < 250, gap_ms
    assert np.abs(frames[switched_at][1]).max() > 1000
