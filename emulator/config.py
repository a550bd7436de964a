"""Settings of the emulator and its fault-injection switches.

Defaults and why:

- ``chunk_ms=100``, ``burst_factor=4``: the real server's output chunking and pacing are not documented
  (PROTOCOL.md: UNCONFIRMED). Both official players queue without bound (Python ``queue.Queue``, the JS
  worklet's buffer list) and interruption only makes sense if received audio can be ahead of playback, so the
  server evidently runs ahead of real time. Four times real time is a typical streaming-TTS real-time factor
  and means up to three quarters of a reply can sit in the client's buffer when a barge-in comes: exactly
  the state the client's flush must handle.
- ``think_time_ms=250``: short enough for quick tests, long enough to tell "reply scheduled" from "reply
  started"; the latency probe subtracts it.
- ``vad_hangover_ms=400``, ``vad_min_speech_ms=60``, ``vad_threshold_dbfs=-45``: an end-of-turn pause in the
  range voice agents use, and a threshold well above μ-law's silence floor and far below speech levels.
- ``ping_interval_s=3``, ``pong_timeout_s=15``: the real interval is undocumented (UNCONFIRMED); pings arrive
  "regularly" in issue logs. Five missed pings end the conversation.
- ``idle_timeout_s=60``: AAPI's ``transport_receive_timeout`` ("no user input for 60 s"), close 1002.
- Signed tokens are single-use by default, stricter than the real API (there a signature becomes single-use
  only with ``include_conversation_id``) so a client that reuses one is caught.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.errors import ConfigError
from core.formats import parse_format

__all__ = ["LOOPBACK_HOSTS", "EmulatorConfig", "Faults", "InjectKind", "InterruptIdMode", "ReplyMode"]

ReplyMode = Literal["echo", "tone", "speech"]
# "next_turn": the interruption carries the id of the turn that interrupted (reply id + 1 or more), which is
# what elevenlabs-python #829 observed (the following reply shares the interruption's id). "reply": it
# carries the interrupted reply's own id; late chunks of that reply then pass a "<" gate by design.
InterruptIdMode = Literal["next_turn", "reply"]
InjectKind = Literal["garbage", "oversize", "bad_base64", "unknown_type", "odd_pcm", "binary"]
LOOPBACK_HOSTS = ("127.0.0.1", "::1")


@dataclass(slots=True)
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port; read Emulator.ws_url after start()
    api_key: str | None = None  # None: a random key per instance (Emulator.api_key)
    agent_id: str = "agent_emulator"  # created at start
    auto_create_agents: bool = True  # any agent_id works; False: unknown ids get 404
    require_auth: bool = True  # new agents need a signed URL (platform_settings.auth.enable_auth)
    single_use_tokens: bool = True
    token_ttl_s: float = 900.0  # "must be used within 15 minutes" (docs authentication.mdx)
    input_format: str = "pcm_16000"  # defaults for new agents; PATCH the agent to change
    output_format: str = "pcm_16000"

    reply_mode: ReplyMode = "echo"
    think_time_ms: float = 250.0
    tone_hz: float = 440.0
    tone_ms: float = 1000.0
    speech_ms: float = 3000.0
    reply_level_dbfs: float = -12.0
    greeting_ms: float = 0.0  # > 0: a speech-like first message right after metadata
    chunk_ms: float = 100.0
    burst_factor: float = 4.0

    vad_threshold_dbfs: float = -45.0
    vad_frame_ms: float = 10.0
    vad_min_speech_ms: float = 60.0
    vad_hangover_ms: float = 400.0
    barge_in: bool = True
    barge_in_extra_ms: float = 0.0  # widen the "still playing at the client" window
    # Wait this long after the VAD hears speech start over a reply before interrupting it (0: at once): the
    # hosted engine's barge-in decision is undocumented and likely slower than this VAD's 60 ms. The reply
    # plays on meanwhile; if it has ended by then, nothing is sent.
    barge_in_delay_ms: float = 0.0
    interrupt_id_mode: InterruptIdMode = "next_turn"
    reply_shares_interrupt_id: bool = False
    stale_chunks_after_interrupt: int = 0

    ping_interval_s: float | None = 3.0
    pong_timeout_s: float | None = 15.0
    idle_timeout_s: float | None = 60.0
    max_duration_s: float | None = None  # agent's conversation.max_duration_seconds wins when set

    max_message_bytes: int = 1024 * 1024  # incoming; larger frames are closed by aiohttp with 1009
    oversize_bytes: int = 16 * 1024 * 1024 + 65536  # injected "oversize" message: above the SDK's 16 MiB
    # The brain server (emulator/brain.py, voice.py): new engine records get this speech_engine.ws_url and
    # request_headers; PATCH /v1/speech-engine/{id} changes them per engine, as on the real API.
    brain_url: str | None = None
    brain_headers: dict[str, str] = field(default_factory=dict)
    brain_connect_timeout_s: float = 5.0
    brain_ping_interval_s: float | None = 5.0  # INFERRED: the engine's brain ping period is not documented
    brain_pong_timeout_s: float | None = 15.0
    brain_response_timeout_s: float | None = 15.0  # no first agent_response by then: the turn says nothing
    tts_voice: str = "en-us"  # espeak-ng voice
    tts_words_per_minute: int = 175

    record_text: bool = True  # keep every message's text in the records (tests); False for long benchmarks
    seed: int | None = None  # jitter and speech-like signal randomness

    def validate(self) -> None:
        if self.host not in LOOPBACK_HOSTS:
            raise ConfigError(f"the emulator only listens on loopback ({', '.join(LOOPBACK_HOSTS)}), "
                              f"not {self.host!r}")
        parse_format(self.input_format)
        parse_format(self.output_format)
        if self.barge_in_delay_ms < 0:
            raise ConfigError("barge_in_delay_ms must be >= 0")
        if self.chunk_ms <= 0 or self.burst_factor <= 0 or self.vad_frame_ms <= 0:
            raise ConfigError("chunk_ms, burst_factor and vad_frame_ms must be positive")


@dataclass(slots=True)
class Faults:
    """Switches read at the moment they matter, so a test can flip them on a running emulator. The
    emulator's instance applies to every conversation that has not been given its own."""

    refuse_connections: int = 0  # refuse the next N upgrades with refuse_status; -1: refuse all
    refuse_status: int = 503
    drop_after_chunks: int | None = None  # abort the TCP connection after this many chunks of a reply
    jitter_ms: float = 0.0  # delay every send by uniform(0, jitter_ms), order kept
    ignore_pongs: bool = False  # behave as if pongs were lost (drives the pong timeout)
    accept_delay_s: float = 0.0  # hold every conversation upgrade this long before answering it

    def take_refusal(self) -> bool:
        if self.refuse_connections == 0:
            return False
        if self.refuse_connections > 0:
            self.refuse_connections -= 1
        return True
