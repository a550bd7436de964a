"""The LiveKit edge: one ``rtc.Room`` joined as the agent, callers' audio in, the agent's voice out.

What it owns and why:

- Every handler is registered before ``connect`` so no early ``track_subscribed`` is missed.
- Callers are remote participants that are not agents (participant kind) and not on the ignore list
  (identity prefixes), so neither this bridge's own track nor another bridge's voice reaches the engine.
- Each caller's track is read by an ``AudioStream``, mono, at the link's caller rate (48 kHz unless set: the
  session reads at the engine's input rate, and the SDK resamples in native code, off the interpreter lock, in
  whole 10 ms frames); every frame goes to ``on_caller_audio`` with its arrival time. That callback must not
  block: the session writes the samples into a ring buffer. :meth:`RoomLink.set_caller_rate` re-opens every
  caller's stream at a new rate; no frame of the old rate is delivered after it returns.
- The agent's voice goes out through an ``AudioSource`` whose native queue is kept short (``queue_ms``,
  a multiple of 10 ms). The native source sends 10 ms from its queue every 10 ms and completes a capture at
  once while the queue holds at most ``queue_ms`` (livekit rust-sdks ``AudioTrackSource::InternalSource``);
  so a paced writer that never queues more than that never waits, and :meth:`clear_voice` empties it.
- Leaving can fail silently, and the agent then stays in the room as a ghost for ~20 s (until the server's
  ICE timeout and its 5 s disconnect timer), shown to every frontend as present. The SDK sends its ``Leave``
  and closes the signal socket at once; when the server is still writing to us at that moment (the answers
  to our last attribute write, a subscription, a participant update), our socket resets, the server's
  writer fails and closes the connection, and its reader never reads the ``Leave`` that was already in its
  buffer (livekit-server 1.13.5 ``rtcservice.go``: the response goroutine closes the conn on a write error).
  Seen here 1 close in ~50 under CPU load. So the session sends nothing before it leaves
  (:meth:`transport.agent_state_link.AgentStateLink.quiesce`), and with the server's API credentials
  (``api_key``/``api_secret``: the runner and the worker pass theirs) the link asks the server afterwards
  whether our participant is still there and removes it (``ghosts_removed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import aiohttp
import numpy as np
import numpy.typing as npt
from livekit import api, rtc

from core.clock import Clock, MonotonicClock
from core.errors import ConfigError, LiveKitError
from core.formats import ROOM_RATE
from core.redact import Redactor, redact_url
from transport.sdk_events import install_router, narrow_room_events

__all__ = ["RoomLink", "RoomLinkConfig", "RoomState", "RoomStats"]

log = logging.getLogger(__name__)
# The SDK's native layer logs the server's refusal verbatim ("401 Unauthorized - invalid token: eyJ…", at
# WARNING and ERROR), access token included. A filter on the SDK's logger (it logs everything on "livekit")
# masks JWTs and URL query values in its records before any handler sees them.
_SDK_LOG_SCRUBBER = Redactor()

VOICE_RATE = ROOM_RATE
CallerAudio = Callable[[str, npt.NDArray[np.int16], int], None]


class RoomState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"  # the SDK lost the server and is trying again on its own
    DISCONNECTED = "disconnected"  # final: left, kicked or the room was closed


@dataclass(frozen=True, slots=True)
class RoomLinkConfig:
    url: str
    token: str = field(repr=False)
    identity: str = ""
    # Native AudioSource queue. The pacer keeps 30 ms in it; 50 ms leaves room for the two clocks to disagree
    # by a frame without a capture having to wait. The SDK's default is 1000 ms (and the native side holds up
    # to twice the setting before a capture blocks).
    queue_ms: int = 50
    # Frames from callers' AudioStreams: 10 ms, the uplink's default chunk, so a chunk leaves as the SDK hands
    # over each 10 ms of a caller's voice. 20 ms would halve the per-frame FFI and Python cost (it matters at
    # hundreds of sessions) but holds the first half of every frame 10 ms longer.
    caller_frame_ms: int = 10
    ignore_identity_prefixes: tuple[str, ...] = ()
    ignore_agents: bool = True
    connect_timeout_s: float = 15.0
    track_name: str = "agent-voice"
    # Callers mixed at most; later ones are not heard (nor counted as present) until a place frees and they
    # publish again. Each caller costs an AudioStream, a ring and its share of the mix on the shared loop,
    # and one room must not take a process's capacity from the others. None: no cap.
    max_callers: int | None = 8
    # The server API's credentials, optional: with them the link makes sure it left (see the module notes).
    api_key: str = ""
    api_secret: str = field(default="", repr=False)
    leave_check_s: float = 1.5  # how long the server may take to apply our leave before we remove ourselves

    def __post_init__(self) -> None:
        if self.queue_ms <= 0 or self.queue_ms % 10:
            raise ConfigError(f"AudioSource queue must be a positive multiple of 10 ms, got {self.queue_ms}")
        if self.caller_frame_ms <= 0 or self.caller_frame_ms % 10:
            raise ConfigError(f"caller frame must be a positive multiple of 10 ms, got {self.caller_frame_ms}")
        if self.max_callers is not None and self.max_callers < 1:
            raise ConfigError(f"max_callers must be at least 1 (or None), got {self.max_callers}")


@dataclass(slots=True)
class RoomStats:
    """The link's counters; :attr:`RoomLink.stats` hands out a copy, the link counts in its own."""
    frames_in: int = 0
    samples_in: int = 0
    frames_out: int = 0
    samples_out: int = 0
    queue_clears: int = 0
    capture_errors: int = 0
    callers_seen: int = 0
    reconnects: int = 0
    ignored_tracks: int = 0
    callers_refused: int = 0  # joins past max_callers
    ghosts_removed: int = 0  # closes whose leave the server never applied: removed through its API


class _Stream(NamedTuple):
    track: rtc.Track  # kept to re-open the stream at another rate
    reader: asyncio.Task[None]


@dataclass(slots=True)
class _Caller:
    identity: str
    streams: dict[str, _Stream] = field(default_factory=dict)  # by publication sid


class RoomLink:
    """Join a room as the agent; report callers and their audio; publish and pace out the agent voice."""

    def __init__(self, config: RoomLinkConfig, *, on_caller_audio: CallerAudio,
                 on_caller_joined: Callable[[str], None] = lambda _id: None,
                 on_caller_left: Callable[[str], None] = lambda _id: None,
                 on_state: Callable[[RoomState], None] = lambda _state: None,
                 clock: Clock | None = None, caller_rate: int = ROOM_RATE) -> None:
        sdk_log = logging.getLogger("livekit")
        if _SDK_LOG_SCRUBBER not in sdk_log.filters:
            sdk_log.addFilter(_SDK_LOG_SCRUBBER)
        self.config = config
        self._counters = RoomStats()
        self._clock = clock or MonotonicClock()
        self._on_audio = on_caller_audio
        self._on_joined = on_caller_joined
        self._on_left = on_caller_left
        self._on_state = on_state
        self._callers: dict[str, _Caller] = {}
        self._caller_rate = caller_rate
        self._retired: set[asyncio.Task[None]] = set()  # cancelled readers, still closing their stream
        self._closing = False
        self._room = rtc.Room()
        self._source: rtc.AudioSource | None = None
        self.disconnected = asyncio.Event()
        self.disconnect_reason: str | None = None
        room = self._room
        room.on("track_subscribed", self._track_subscribed)
        room.on("track_unsubscribed", self._track_unsubscribed)
        room.on("participant_connected", self._participant_connected)
        room.on("participant_disconnected", self._participant_disconnected)
        room.on("reconnecting", self._reconnecting)
        room.on("reconnected", self._reconnected)
        room.on("disconnected", self._disconnected)

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def room(self) -> rtc.Room:
        return self._room

    @property
    def identity(self) -> str:
        return self._room.local_participant.identity if self._room.isconnected() else self.config.identity

    @property
    def stats(self) -> RoomStats:
        """A snapshot of the counters."""
        return replace(self._counters)

    @property
    def callers(self) -> list[str]:
        return list(self._callers)

    @property
    def caller_rate(self) -> int:
        return self._caller_rate

    def set_caller_rate(self, rate: int) -> None:
        """Read callers at ``rate`` from now on: every open stream is re-opened at it (a caller loses at most
        the few milliseconds the old stream's native queue held). The cancelled readers deliver nothing more:
        each is suspended at its next frame and is cancelled there."""
        if rate == self._caller_rate:
            return
        log.info("reading callers at %d Hz (was %d)", rate, self._caller_rate)
        self._caller_rate = rate
        for caller in self._callers.values():
            for sid, stream in list(caller.streams.items()):
                self._retire(stream.reader)
                self._open_stream(caller, sid, stream.track)

    async def connect(self) -> None:
        url = self.config.url
        self._on_state(RoomState.CONNECTING)
        install_router()  # the process's SDK events routed by handle (sdk_events), once
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await self._room.connect(url, self.config.token, rtc.RoomOptions(auto_subscribe=True))
        except TimeoutError as exc:
            raise LiveKitError(f"no LiveKit server answered at {redact_url(url)} within "
                               f"{self.config.connect_timeout_s:.0f} s") from exc
        except rtc.ConnectError as exc:
            raise LiveKitError(f"could not join the room at {redact_url(url)}: {_explain(str(exc))}") from None
        narrow_room_events(self._room)  # this room's listener wakes for its own events only (sdk_events)
        self._source = rtc.AudioSource(VOICE_RATE, 1, queue_size_ms=self.config.queue_ms)
        track = rtc.LocalAudioTrack.create_audio_track(self.config.track_name, self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self._room.local_participant.publish_track(track, options)
        # Participants already in the room were announced during connect; pick up any we did not see.
        for participant in self._room.remote_participants.values():
            self._participant_connected(participant)
        self._on_state(RoomState.CONNECTED)
        log.info("joined room %s as %s", self._room.name, self.identity)

    async def close(self) -> None:
        # A caller's track can still be announced while we leave (its event was queued before the
        # disconnect): from here on nothing new is subscribed, and what slipped in is ended after the room is
        # gone, so no caller-audio task outlives close().
        self._closing = True
        await self._end_caller_streams()
        joined = self._room.isconnected()
        me = self._room.local_participant
        room, sid, identity = self._room.name, me.sid if joined else "", me.identity if joined else ""
        try:
            await self._room.disconnect()
        except Exception as exc:  # the agent may stay in the room as a ghost until the server times it out
            log.warning("leaving the room failed: %s", exc)
        await self._end_caller_streams()
        if sid and self.config.api_key and self.config.api_secret:
            await self._make_sure_left(room, identity, sid)
        if self._source is not None:
            await self._source.aclose()
            self._source = None

    async def _make_sure_left(self, room: str, identity: str, sid: str) -> None:
        """Ask the server whether participant ``sid`` is still in ``room``; if it still is after ``leave_check_s``
        (our leave was lost), remove it. ``identity`` is the token's (a worker's job gets it from LiveKit), not
        the config's. Another participant with our identity (a newer agent) is left alone. Never raises: a
        failure is logged."""
        lk = api.LiveKitAPI(self.config.url, self.config.api_key, self.config.api_secret,
                            timeout=aiohttp.ClientTimeout(total=2.0))
        who = api.RoomParticipantIdentity(room=room, identity=identity)
        deadline = self._clock.now_ns() + int(self.config.leave_check_s * 1e9)
        try:
            while True:
                try:
                    info = await lk.room.get_participant(who)
                except api.TwirpError as exc:
                    if exc.code == api.TwirpErrorCode.NOT_FOUND:
                        return  # gone: the leave was applied (or the room was)
                    raise
                if info.sid != sid:
                    return
                if self._clock.now_ns() >= deadline:
                    break
                await asyncio.sleep(0.1)
            with contextlib.suppress(api.TwirpError):  # gone in between is as good
                await lk.room.remove_participant(who)
            self._counters.ghosts_removed += 1
            log.warning("the server still had the agent in room %r %.1f s after it left (its leave was lost): "
                        "removed it through the server API", room, self.config.leave_check_s)
        except Exception as exc:
            log.warning("could not check that the agent left room %r: %s", room, type(exc).__name__)
        finally:
            await lk.aclose()

    def _retire(self, reader: asyncio.Task[None]) -> None:
        """Cancel a caller's reader; :meth:`close` awaits it (it closes its native stream on the way out)."""
        reader.cancel()
        self._retired.add(reader)
        reader.add_done_callback(self._retired.discard)

    async def _end_caller_streams(self) -> None:
        while self._retired or any(c.streams for c in self._callers.values()):
            for caller in self._callers.values():
                for stream in caller.streams.values():
                    self._retire(stream.reader)
                caller.streams.clear()
            tasks = list(self._retired)
            self._retired.clear()
            for task in tasks:
                # A crashed reader was logged by its done callback; it must not stop the agent leaving.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._callers.clear()

    # -- the agent's voice -----------------------------------------------------------------------------
    async def send_voice(self, samples: npt.NDArray[np.int16]) -> None:
        """Hand 48 kHz samples to the AudioSource.

        The capture request reaches the native queue synchronously, before the first await; so a
        :meth:`clear_voice` issued after this call has started always removes these samples too. The pacer
        never queues more than ``queue_ms``, so the native side confirms at once and this returns after one
        callback round trip.
        """
        source = self._source
        if source is None or samples.size == 0:
            return
        self._counters.frames_out += 1
        self._counters.samples_out += samples.size
        try:
            await source.capture_frame(rtc.AudioFrame(samples.tobytes(), VOICE_RATE, 1, samples.size))
        except Exception as exc:  # the SDK raises a bare Exception when a capture fails
            self._counters.capture_errors += 1
            log.warning("capture_frame failed: %s", exc)

    def clear_voice(self) -> None:
        """Drop everything queued in the AudioSource: what has not been sent yet will never be heard."""
        if self._source is not None:
            self._source.clear_queue()
            self._counters.queue_clears += 1

    # -- room events -----------------------------------------------------------------------------------
    def _is_caller(self, participant: rtc.RemoteParticipant) -> bool:
        if participant.identity == self.identity:
            return False
        if self.config.ignore_agents and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return False
        return not participant.identity.startswith(self.config.ignore_identity_prefixes)

    def _participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        if not self._closing and self._is_caller(participant) and participant.identity not in self._callers:
            cap = self.config.max_callers
            if cap is not None and len(self._callers) >= cap:
                self._counters.callers_refused += 1
                log.warning("caller %s not admitted: the room already has %d callers (max_callers)",
                            participant.identity, cap)
                return
            self._callers[participant.identity] = _Caller(participant.identity)
            self._counters.callers_seen += 1
            log.info("caller %s joined", participant.identity)
            self._on_joined(participant.identity)

    def _participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        caller = self._callers.pop(participant.identity, None)
        if caller is None:
            return
        for stream in caller.streams.values():
            self._retire(stream.reader)
        log.info("caller %s left", participant.identity)
        self._on_left(participant.identity)

    def _track_subscribed(self, track: rtc.Track, publication: rtc.RemoteTrackPublication,
                          participant: rtc.RemoteParticipant) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO or self._closing:
            return
        if not self._is_caller(participant):
            self._counters.ignored_tracks += 1
            log.debug("ignoring audio of %s (agent or ignored identity)", participant.identity)
            return
        self._participant_connected(participant)
        caller = self._callers.get(participant.identity)
        if caller is None:  # past max_callers
            self._counters.ignored_tracks += 1
            return
        self._open_stream(caller, publication.sid, track)

    def _open_stream(self, caller: _Caller, sid: str, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=self._caller_rate, num_channels=1,
                                 frame_size_ms=self.config.caller_frame_ms)
        task = asyncio.get_running_loop().create_task(self._read_caller(caller.identity, stream),
                                                      name=f"caller-audio:{caller.identity}")
        task.add_done_callback(_log_crash)
        caller.streams[sid] = _Stream(track, task)

    def _track_unsubscribed(self, _track: rtc.Track, publication: rtc.RemoteTrackPublication,
                            participant: rtc.RemoteParticipant) -> None:
        caller = self._callers.get(participant.identity)
        stream = caller.streams.pop(publication.sid, None) if caller else None
        if stream is not None:
            self._retire(stream.reader)

    async def _read_caller(self, identity: str, stream: rtc.AudioStream) -> None:
        stats, on_audio, clock = self._counters, self._on_audio, self._clock
        try:
            async for event in stream:
                samples = np.frombuffer(event.frame.data, dtype=np.int16)
                stats.frames_in += 1
                stats.samples_in += samples.size
                on_audio(identity, samples, clock.now_ns())
        finally:
            await stream.aclose()

    def _reconnecting(self) -> None:
        log.warning("LiveKit connection lost; the SDK is reconnecting")
        self._on_state(RoomState.RECONNECTING)

    def _reconnected(self) -> None:
        self._counters.reconnects += 1
        log.info("LiveKit connection restored")
        self._on_state(RoomState.CONNECTED)

    def _disconnected(self, reason: object) -> None:
        self.disconnect_reason = _reason_name(reason)
        log.info("left the room (%s)", self.disconnect_reason)
        self.disconnected.set()
        self._on_state(RoomState.DISCONNECTED)


def _reason_name(reason: object) -> str:
    with contextlib.suppress(Exception):
        return str(rtc.DisconnectReason.Name(reason))  # type: ignore[arg-type]
    return str(reason)


def _explain(error: str) -> str:
    lowered = error.lower()
    if "401" in lowered or "unauthorized" in lowered or "invalid token" in lowered or "token" in lowered:
        return "the server refused the token (check LIVEKIT_API_KEY / LIVEKIT_API_SECRET)"
    if "connection refused" in lowered or "failed to connect" in lowered or "io error" in lowered:
        return "nothing is listening there (is livekit-server running?)"
    return error[:200]


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s crashed", task.get_name(), exc_info=task.exception())

