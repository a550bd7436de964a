"""The emulator as a strict, faithful server: REST, auth, formats, turn-taking, barge-in, pings, faults."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from core.errors import ConfigError
from core.formats import ENGINE_FORMATS, parse_format
from emulator import Emulator, EmulatorConfig
from emulator.signals import speech_like, tone
from emulator.vad import EnergyVad, VadEdge
from tests.engine_fixtures import audio_of, chunks, fast, peak_hz, raw, running, utterance

PCM16 = parse_format("pcm_16000")
ROOT = Path(__file__).resolve().parents[1]


async def _get(url: str, key: str | None = None) -> tuple[int, Any]:
    headers = {"xi-api-key": key} if key is not None else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.json()


async def _patch(url: str, key: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, \
            session.patch(url, headers={"xi-api-key": key}, json=body) as response:
        return response.status, await response.json()


# ------------------------------------------------------------------------------------------ pure parts


def test_vad_edges_and_chunking_invariance() -> None:
    rate = 16000
    signal = np.concatenate((np.zeros(1600, np.int16), tone(rate, 300, 300, -20), np.zeros(8000, np.int16)))
    whole = EnergyVad(rate, min_speech_ms=30, hangover_ms=100).push(signal)
    assert whole == [VadEdge("start", 1600), VadEdge("end", 1600 + 4800)]
    vad = EnergyVad(rate, min_speech_ms=30, hangover_ms=100)
    pieces = [edge for i in range(0, signal.size, 37) for edge in vad.push(signal[i:i + 37])]
    assert pieces == whole


def test_vad_ignores_short_blips_and_quiet_noise() -> None:
    rate = 16000
    vad = EnergyVad(rate, min_speech_ms=60, hangover_ms=100)
    blip = tone(rate, 30, 300, -20)
    noise = (np.random.default_rng(1).normal(0, 30, rate)).astype(np.int16)  # about -60 dBFS
    assert vad.push(np.concatenate((blip, np.zeros(3200, np.int16), noise))) == []


def test_signals_have_the_asked_pitch_and_level() -> None:
    sine = tone(24000, 500, 440, -12)
    assert abs(peak_hz(sine, 24000) - 440) < 3
    assert abs(np.max(np.abs(sine)) - 32767 * 10 ** (-12 / 20)) < 2
    speech = speech_like(16000, 2000, -12, seed=1)
    assert speech.size == 32000 and np.max(np.abs(speech)) > 8000
    assert 80 < peak_hz(speech, 16000) < 700  # energy sits at the voiced fundamental and low harmonics


def test_emulator_listens_on_loopback_only() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        Emulator(EmulatorConfig(host="0.0.0.0"))


# ------------------------------------------------------------------------------------------ REST


async def test_signed_url_endpoint_checks_the_key() -> None:
    async with running() as emu:
        url = f"{emu.rest_base_url}/v1/convai/conversation/get-signed-url?agent_id=agent_emulator"
        assert (await _get(url))[0] == 401
        assert (await _get(url, "wrong-key"))[0] == 401
        status, body = await _get(url, emu.api_key)
        assert status == 200
        assert body["signed_url"].startswith(f"{emu.ws_url}?agent_id=agent_emulator&conversation_signature=")
        assert emu.signed_urls_issued == 1


async def test_agent_and_speech_engine_config_endpoints() -> None:
    async with running() as emu:
        agent_url = f"{emu.rest_base_url}/v1/convai/agents/agent_x"
        engine_url = f"{emu.rest_base_url}/v1/speech-engine/agent_x"
        status, agent = await _get(agent_url, emu.api_key)
        assert status == 200 and agent["conversation_config"]["asr"]["user_input_audio_format"] == "pcm_16000"
        status, agent = await _patch(agent_url, emu.api_key, {"conversation_config": {
            "asr": {"user_input_audio_format": "ulaw_8000"}, "tts": {"agent_output_audio_format": "pcm_24000"}}})
        assert status == 200 and agent["conversation_config"]["tts"]["agent_output_audio_format"] == "pcm_24000"
        status, engine = await _patch(engine_url, emu.api_key, {"speech_engine": {
            "ws_url": "wss://brain.example/ws", "request_headers": {"X-Brain-Secret": {"secret_id": "sec_1"}}}})
        assert status == 200
        assert engine["speech_engine"] == {"ws_url": "wss://brain.example/ws",
                                           "request_headers": {"X-Brain-Secret": {"secret_id": "sec_1"}}}
        assert engine["asr"]["user_input_audio_format"] == "ulaw_8000"  # one record, two views
        status, error = await _patch(engine_url, emu.api_key, {"tts": {"agent_output_audio_format": "mp3_44100"}})
        assert status == 422 and "mp3_44100" in error["detail"]["message"]
        assert (await _get(agent_url, emu.api_key))[1]["conversation_config"]["tts"][
            "agent_output_audio_format"] == "pcm_24000"  # a refused PATCH changes nothing
        assert (await _get(agent_url, "nope"))[0] == 401
        # New conversations use the patched formats.
        async with raw(emu.signed_url("agent_x")) as client:
            meta = (await client.init())["conversation_initiation_metadata_event"]
        assert (meta["user_input_audio_format"], meta["agent_output_audio_format"]) == ("ulaw_8000", "pcm_24000")


async def test_unknown_agents_are_404_when_not_auto_created() -> None:
    async with running(fast(auto_create_agents=False)) as emu:
        status, _ = await _get(f"{emu.rest_base_url}/v1/convai/agents/agent_missing", emu.api_key)
        assert status == 404


# ------------------------------------------------------------------------------------------ auth at upgrade


async def test_signatures_are_single_use_and_checked() -> None:
    async with running() as emu:
        url = emu.signed_url()
        async with raw(url + "&source=python_sdk&version=9.9", subprotocols=["convai"]) as client:
            assert client.ws.subprotocol == "convai"
            await client.init()
        conversation = await emu.next_conversation()
        assert conversation.query == {"agent_id": "agent_emulator", "source": "python_sdk", "version": "9.9"}
        for bad, status in ((url, 403), (url[:-3] + "abc", 403), (emu.public_url(), 401),
                            (emu.signed_url("agent_other").replace("agent_other", "agent_emulator", 1), 403)):
            with pytest.raises(InvalidStatus) as info:
                async with raw(bad):
                    pass
            assert info.value.response.status_code == status
        assert [r.reason for r in emu.rejections] == [
            "signature already used", "bad signature", "this agent requires a signed URL",
            "signature is for another agent"]


async def test_public_agent_needs_no_signature() -> None:
    async with running(fast(require_auth=False)) as emu, raw(emu.public_url()) as client:
        assert client.ws.subprotocol is None  # the Python SDK asks for none
        meta = await client.init()
        assert meta["conversation_initiation_metadata_event"]["conversation_id"].startswith("conv_")


# ------------------------------------------------------------------------------------------ strictness


@pytest.mark.parametrize(("first", "second"), [
    ("not json", None),
    ({"user_audio_chunk": "AAAA"}, None),  # audio before conversation_initiation_client_data
    ({"type": "conversation_initiation_client_data"}, {"user_audio_chunk": "AAA"}),  # bad base64
    ({"type": "conversation_initiation_client_data"}, {"user_audio_chunk": "AAAAAAA="}),  # 5 bytes: odd PCM
    ({"type": "conversation_initiation_client_data"}, {"type": "pong"}),  # missing event_id
    ({"type": "conversation_initiation_client_data"}, {"type": "bogus"}),
    ({"type": "conversation_initiation_client_data"}, {"user_audio_chunk": "AAE="}),  # 2 bytes: valid
])
async def test_malformed_input_is_closed_with_1008(first: Any, second: Any) -> None:
    async with running(fast(require_auth=False)) as emu, raw(emu.public_url()) as client:
        await client.send(first)
        if second is not None:
            await client.next("conversation_initiation_metadata")
            await client.send(second)
        conversation = await emu.next_conversation()
        if second == {"user_audio_chunk": "AAE="}:  # a valid 1-sample chunk: nothing happens
            await conversation.wait_for(lambda: conversation.audio_chunks != [])
            assert not conversation.ended
            return
        error = await client.next("error")
        assert error["error_event"]["code"] == 1008 and error["error_event"]["error_type"] == "invalid_message"
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 1008
        await conversation.wait_closed()
        assert conversation.close_code == 1008 and "invalid_message" in (conversation.end_reason or "")


# ------------------------------------------------------------------------------------------ turns


@pytest.mark.parametrize("name", ENGINE_FORMATS)
async def test_echo_in_every_format(name: str) -> None:
    fmt = parse_format(name)
    async with running(fast(require_auth=False, input_format=name, output_format=name)) as emu, \
            raw(emu.public_url()) as client:
        meta = (await client.init())["conversation_initiation_metadata_event"]
        assert meta["user_input_audio_format"] == name and meta["agent_output_audio_format"] == name
        spoken = utterance(300, 250, fmt.rate, 440)
        for data in chunks(spoken, fmt):
            await client.audio(data)
        await client.next("agent_response")
        conversation = await emu.next_conversation()
        reply = await conversation.next_reply()
        await conversation.wait_for(lambda: reply.done)
        while True:  # drain what has arrived
            try:
                await client.recv(0.2)
            except TimeoutError:
                break
        heard = audio_of(client.received, fmt, reply.event_id)
        assert reply.mode == "echo" and heard.size == reply.samples.size
        assert abs(heard.size - round(0.3 * fmt.rate)) <= fmt.rate // 50  # the 300 ms tone, ±20 ms
        assert abs(peak_hz(heard, fmt.rate) - 440) < 8
        if fmt.encoding == "pcm":  # same rate, no resampling: sample-exact echo of what was sent
            assert np.array_equal(heard, spoken[:heard.size])


async def test_echo_is_resampled_to_the_output_format() -> None:
    async with running(fast(require_auth=False, input_format="ulaw_8000", output_format="pcm_44100")) as emu, \
            raw(emu.public_url()) as client:
        await client.init()
        for data in chunks(utterance(400, 250, 8000, 300), parse_format("ulaw_8000")):
            await client.audio(data)
        conversation = await emu.next_conversation()
        reply = await conversation.next_reply()
        await conversation.wait_for(lambda: reply.done)
        assert reply.rate == 44100 and abs(reply.samples.size - 0.4 * 44100) < 44100 * 0.03
        assert abs(peak_hz(reply.samples, 44100) - 300) < 5
        assert np.array_equal(conversation.received_audio()[:10],
                              parse_format("ulaw_8000").decode(parse_format("ulaw_8000").encode(
                                  utterance(400, 250, 8000, 300)[:10])))


async def test_turns_have_increasing_ids_shared_by_all_chunks_and_arrive_in_bursts() -> None:
    async with running(fast(require_auth=False, reply_mode="tone", tone_ms=1000, chunk_ms=100,
                            burst_factor=4)) as emu, raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        ids = []
        for _ in range(2):
            for data in chunks(utterance(200, 200), PCM16):
                await client.audio(data)
            reply = await conversation.next_reply()
            await conversation.wait_for(lambda r=reply: r.done)  # type: ignore[misc]
            ids.append(reply.event_id)
            sends = [r for r in conversation.sent("audio") if r.event_id == reply.event_id]
            assert len(sends) == 10 and reply.samples_sent == 16000
            span_ms = (sends[-1].ns - sends[0].ns) / 1e6
            assert 150 < span_ms < 500  # 9 gaps of 25 ms: a 1 s reply goes out in about a quarter second
            await asyncio.sleep(0.9)  # let it "play out" so the next utterance is not a barge-in
        assert ids == [1, 2]
        order = [r.type for r in conversation.sent() if r.event_id == 1]
        assert order[:2] == ["user_transcript", "agent_response"] and set(order[2:]) == {"audio"}


@pytest.mark.parametrize("share", [False, True])
async def test_barge_in_while_reply_is_still_playing_at_the_client(share: bool) -> None:
    config = fast(require_auth=False, reply_mode="speech", speech_ms=2000, chunk_ms=100, burst_factor=8,
                  reply_shares_interrupt_id=share, stale_chunks_after_interrupt=0)
    async with running(config) as emu, raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        for data in chunks(utterance(200, 200), PCM16):
            await client.audio(data)
        reply = await conversation.next_reply()
        await conversation.wait_for(lambda: reply.end_ns is not None)  # every byte sent after ~0.25 s ...
        await asyncio.sleep(0.3)
        assert reply.playing_at(time.monotonic_ns())  # ... but the client is still playing it
        for data in chunks(utterance(200, 200), PCM16):
            await client.audio(data)
        interruption = await client.next("interruption")
        correction = await client.next("agent_response_correction")
        assert interruption["interruption_event"]["event_id"] == reply.event_id + 1 == reply.interruption_id
        assert correction["agent_response_correction_event"]["event_id"] == reply.event_id
        assert correction["agent_response_correction_event"]["original_agent_response"] == reply.text
        following = await conversation.next_reply()
        assert following.event_id == (reply.event_id + 1 if share else reply.event_id + 2)


@pytest.mark.parametrize("delay_ms", [0.0, 300.0])
async def test_barge_in_delay_holds_the_interruption_back(delay_ms: float) -> None:
    """barge_in_delay_ms: the VAD hears the talk-over at once, the interruption comes that much later."""
    config = fast(require_auth=False, reply_mode="speech", speech_ms=3000, chunk_ms=100, burst_factor=1,
                  barge_in_delay_ms=delay_ms, vad_hangover_ms=2000)  # the turn outlasts the delay
    async with running(config) as emu, raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        reply = conversation.trigger_reply()
        await conversation.wait_for(lambda: reply.chunks_sent >= 2)
        for data in chunks(utterance(200, 0), PCM16):
            await client.audio(data)
        spoke_ns = time.monotonic_ns()  # the VAD has its 60 ms of speech by now
        await client.next("interruption")
        waited_ms = (time.monotonic_ns() - spoke_ns) / 1e6
        assert reply.interrupted_ns is not None
        if delay_ms:
            assert waited_ms >= delay_ms - 20  # timer slack only
        else:
            assert waited_ms < 250  # generous: a loaded machine, but far below the delayed case


async def test_barge_in_delay_sends_nothing_when_the_reply_ended_first() -> None:
    config = fast(require_auth=False, reply_mode="speech", speech_ms=300, chunk_ms=100, burst_factor=8,
                  barge_in_delay_ms=600, vad_hangover_ms=2000)
    async with running(config) as emu, raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        reply = conversation.trigger_reply()
        await conversation.wait_for(lambda: reply.end_ns is not None)
        for data in chunks(utterance(200, 0), PCM16):
            await client.audio(data)
        await asyncio.sleep(0.9)  # the reply (300 ms) has played out at the client before the 600 ms delay ends
        assert reply.interrupted_ns is None
        assert "interruption" not in [m["type"] for m in client.received]


async def test_interruption_stops_the_reply_and_can_send_stale_chunks() -> None:
    config = fast(require_auth=False, reply_mode="speech", speech_ms=3000, chunk_ms=100, burst_factor=2,
                  stale_chunks_after_interrupt=3)
    async with running(config) as emu, raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        reply = conversation.trigger_reply()
        await conversation.wait_for(lambda: reply.chunks_sent >= 3)
        assert conversation.interrupt()
        await client.next("interruption")
        await client.next("agent_response_correction")
        sent_before = reply.chunks_sent
        await asyncio.sleep(0.3)
        assert reply.chunks_sent == sent_before and reply.end_ns is None  # nothing more of the reply ...
        assert reply.stale_chunks_sent == 3  # ... except the 3 stale chunks, sent after the interruption
        types = [m["type"] for m in client.received]
        after = types[types.index("interruption") + 1:]
        assert after[:3] == ["audio"] * 3 and after[3] == "agent_response_correction"
        stale = [m for m in client.received[types.index("interruption"):] if m["type"] == "audio"]
        assert {m["audio_event"]["event_id"] for m in stale} == {reply.event_id}
        assert not conversation.interrupt()  # nothing left to interrupt


async def test_user_speech_after_playout_is_a_new_turn_not_a_barge_in() -> None:
    async with running(fast(require_auth=False, reply_mode="tone", tone_ms=200)) as emu, \
            raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        reply = conversation.trigger_reply()
        await conversation.wait_for(lambda: reply.done)
        await asyncio.sleep(0.3)
        for data in chunks(utterance(200, 200), PCM16):
            await client.audio(data)
        await conversation.next_reply()
        await conversation.next_reply()
        assert all(r.interrupted_ns is None for r in conversation.replies)
        assert "interruption" not in [m["type"] for m in client.received]


# ------------------------------------------------------------------------------------------ pings, endings


async def test_pings_carry_measured_rtt_and_missing_pongs_end_the_conversation() -> None:
    async with running(fast(require_auth=False, ping_interval_s=0.1, pong_timeout_s=0.4)) as emu, \
            raw(emu.public_url()) as client:
        await client.init()
        first = await client.next("ping")
        assert first["ping_event"] == {"event_id": 1, "ping_ms": None}
        await client.send({"type": "pong", "event_id": 1})
        second = await client.next("ping")
        conversation = await emu.next_conversation()
        assert conversation.pings[0].rtt_ms is not None
        assert second["ping_event"]["ping_ms"] == max(1, math.ceil(conversation.pings[0].rtt_ms))
        # Stop answering: the conversation ends with an error event and close 1002.
        error = await client.next("error", timeout=3)
        assert error["error_event"]["code"] == 1002
        assert error["error_event"]["error_type"] == "transport_receive_timeout"
        with pytest.raises(ConnectionClosed):
            while True:
                await client.recv()
        assert client.ws.close_code == 1002


@pytest.mark.parametrize(("changes", "code", "error_type"), [
    ({"max_duration_s": 0.3}, 1000, "max_duration_exceeded"),
    ({"idle_timeout_s": 0.3}, 1002, "transport_receive_timeout"),
])
async def test_server_side_endings(changes: dict[str, Any], code: int, error_type: str) -> None:
    async with running(fast(require_auth=False, **changes)) as emu, raw(emu.public_url()) as client:
        await client.init()
        error = await client.next("error", timeout=3)
        assert (error["error_event"]["code"], error["error_event"]["error_type"]) == (code, error_type)
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == code


async def test_user_activity_keeps_a_quiet_conversation_open_and_pongs_do_not() -> None:
    async with running(fast(require_auth=False, idle_timeout_s=0.4, ping_interval_s=0.05)) as emu, \
            raw(emu.public_url()) as active, raw(emu.public_url()) as quiet:
        await active.init()
        await quiet.init()
        started = time.monotonic()
        while time.monotonic() - started < 0.8:  # twice the idle timeout
            await active.send({"type": "user_activity"})
            for client in (active, quiet):
                try:
                    while True:
                        message = await client.recv(0.02)
                        if message["type"] == "ping":
                            await client.send({"type": "pong", "event_id": message["ping_event"]["event_id"]})
                except (TimeoutError, ConnectionClosed):
                    pass
        first, second = emu.conversations
        assert not first.ended
        assert second.ended and second.close_code == 1002 and second.pings[0].pong_ns is not None
        assert second.ended_ns is not None and (second.ended_ns - second.started_ns) / 1e9 < 0.7


# ------------------------------------------------------------------------------------------ faults


async def test_injected_faults_arrive_in_order() -> None:
    async with running(fast(require_auth=False, oversize_bytes=2000)) as emu, raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        for kind in ("garbage", "unknown_type", "bad_base64", "odd_pcm", "oversize"):
            conversation.inject(kind)
        conversation.inject("binary")
        texts = [await asyncio.wait_for(client.ws.recv(), 2) for _ in range(6)]
        assert texts[0] == "this is not json {"
        assert json.loads(texts[1])["type"] == "emulator_unknown_event"
        assert json.loads(texts[2])["audio_event"]["audio_base_64"] == "@@not*base64@@"
        assert json.loads(texts[3])["audio_event"]["audio_base_64"] == "AQID"
        assert len(texts[4]) > 2000
        assert texts[5] == b"\x00\x01binary"
        assert [r.type for r in conversation.sent()][1:] == [
            "garbage", "unknown_type", "bad_base64", "odd_pcm", "oversize", "binary"]


async def test_refusals_stall_jitter_and_drop() -> None:
    async with running(fast(require_auth=False, reply_mode="tone", tone_ms=1000, chunk_ms=50)) as emu:
        emu.faults.refuse_connections = 2
        for _ in range(2):
            with pytest.raises(InvalidStatus) as info:
                async with raw(emu.public_url()):
                    pass
            assert info.value.response.status_code == 503
        async with raw(emu.public_url()) as client:
            await client.init()
            conversation = await emu.next_conversation()
            conversation.stall(0.3)
            stalled_at = time.monotonic_ns()
            conversation.trigger_reply(ms=200)
            await client.next("audio")
            assert (time.monotonic_ns() - stalled_at) / 1e6 >= 280
            emu.faults.jitter_ms = 20
            emu.faults.drop_after_chunks = 5
            reply = conversation.trigger_reply()
            with pytest.raises(ConnectionClosed):
                while True:
                    await client.recv()
            assert client.ws.close_code == 1006  # aborted: no close frame
            assert reply.chunks_sent == 5
            ids = [m["audio_event"]["event_id"] for m in client.received if m["type"] == "audio"]
            assert ids == sorted(ids)  # jitter never reorders
            await conversation.wait_closed()


async def test_many_conversations_at_once() -> None:
    async with running(fast(require_auth=False)) as emu:
        async def talk(hz: float) -> float:
            async with raw(emu.public_url()) as client:
                await client.init()
                for data in chunks(utterance(300, 200, 16000, hz), PCM16):
                    await client.audio(data)
                await client.next("agent_response")
                heard: list[dict[str, Any]] = []
                while sum(len(m["audio_event"]["audio_base_64"]) for m in heard) < 12000:
                    message = await client.recv()
                    if message["type"] == "audio":
                        heard.append(message)
                return peak_hz(audio_of(heard, PCM16), 16000)

        peaks = await asyncio.gather(*(talk(hz) for hz in (300, 500, 700, 900, 1100)))
        assert [round(p, -2) for p in peaks] == [300, 500, 700, 900, 1100]
        assert len({c.conversation_id for c in emu.conversations}) == 5


def test_runs_alone_as_a_module() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "emulator", "--port", "0", "--api-key", "k" * 12],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        rest = lines[0].split()[1]
        assert lines[1].split()[1].startswith("ws://127.0.0.1:") and lines[2].split()[2] == "k" * 12

        async def mint() -> tuple[int, Any]:
            return await _get(f"{rest}/v1/convai/conversation/get-signed-url?agent_id=a", "k" * 12)

        status, body = asyncio.run(mint())
        assert status == 200 and "conversation_signature=" in body["signed_url"]
    finally:
        process.terminate()
        process.wait(10)
