"""Callers to engine: mix at the callers' rate, resample to the engine's input rate, encode, one chunk at a time.

Callers are read at the engine's own rate whenever it is one the room's SDK delivers (8, 16, 24 or 48 kHz: the
SDK resamples each caller in native code, in whole 10 ms frames, off the interpreter lock): the resampler here is
then the identity and holds nothing, and the mixer handles a third of the samples at 16 kHz. Otherwise (the
44.1 kHz family, or a session configured to read callers at 48 kHz) they are mixed at the rate they come and
resampled here, as below.

The uplink holds nothing it does not have to. Three things could hold a caller's voice here, and each is
bounded to a few milliseconds:

- **The chunk.** 10 ms by default: one LiveKit frame, so with one active caller a chunk is complete (and
  leaves) the moment that caller's frame arrives, with nothing waiting for a later frame. The docs suggest
  ~250 ms per ``user_audio_chunk``, the web client sends 25 ms, the vendor's LiveKit guide 10 ms; 20, 25 or
  250 ms stay possible (any positive multiple of 5 ms). The cost is 100 messages a second per session (about
  0.45 kB each at pcm_16000), measured in ``benchmarks``.
- **The resampler** (only when the callers' rate is not the engine's). 48 kHz to the engine's rate through
  ``core.resample.Resampler``, which takes our own linear-phase FIRs for every uplink pair: 0.46–2.54 ms of
  group delay, no block hold (soxr held 11–43 ms).
- **The chunk grid.** The FIR is time-aligned (output sample ``k`` sits at input time ``k``), so its first
  chunk is one group delay short and every later chunk ends that much before its frame did. A receiver that
  works in frames of the stream it receives (a VAD's 10/20/30 ms frames counted from the first sample, as the
  emulator's) then completes each frame only with the *next* chunk: 10 ms late, at every turn start and end
  (measured: the talk-over → ``interruption`` and the turn were ~10 ms later than the naive bridge's, whose
  SDK resampler emits whole frames). So the first chunk after the resampler starts is padded at the front
  with the samples the filter still owes: every chunk then carries exactly its frame's worth, chunk ``k``
  ends at sample ``(k + 1) × chunk`` of the stream, and the voice sits a group delay (0.5–2.5 ms) later in
  it, the filter's real cost, as in any causal resampler.
- **Other callers.** A chunk is cut when every *active* caller has a whole chunk waiting, or when one caller is
  ``slack_ms`` further ahead (:meth:`Uplink.ready`). So the uplink runs at the pace of the callers' audio, not
  of a timer that beats against it, and two callers whose frames arrive a few milliseconds apart are mixed
  chunk by chunk. Cutting as soon as *any* caller had a chunk would alternate between them: each arrival would
  cut a chunk holding only that caller, the others' share padded with silence — interleaving, not mixing
  (the end-to-end test catches it). The price is the alignment wait: the earlier caller's frame waits for the
  later caller's (LiveKit delivers tracks out of phase, 0–10 ms apart), recorded per chunk as
  ``uplink.align_wait``. The slack (50 ms: a cut is forced once one caller is 60 ms ahead at 10 ms chunks, as
  with the earlier 20 ms chunks and two chunks of slack) lets one caller's frames arrive late by that much, as
  they do on a busy machine, without a hole in their voice. A caller who sent nothing for ``inactive_ms`` (muted, track
  gone) is not waited for at all.

No clock is read here: every time comes in as ``now_ns`` (the time the frame was received, the time the chunk
is cut). Per chunk the uplink records, on those times, how long its oldest complete caller waited for the cut
(``uplink.align_wait``) and what the resampler still holds (``uplink.resampler_hold``); their sum is
:attr:`Uplink.last_held_ns`, the bridge's hold beyond its own processing time.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from core.errors import ConfigError
from core.formats import AudioFormat
from core.mixer import MIXER_RATE, Mixer
from core.resample import Resampler
from core.timing import StageTimer

__all__ = ["DEFAULT_CHUNK_MS", "Uplink"]

DEFAULT_CHUNK_MS = 10
Int16Array = npt.NDArray[np.int16]


class Uplink:
    """``write`` callers' frames at ``in_rate`` (48 kHz unless given); take engine-format chunks with
    :meth:`next_chunk`."""

    def __init__(self, fmt: AudioFormat, *, in_rate: int = MIXER_RATE, chunk_ms: int = DEFAULT_CHUNK_MS,
                 slack_ms: int = 50, inactive_ms: int = 100, mixer: Mixer | None = None,
                 timer: StageTimer | None = None) -> None:
        if chunk_ms <= 0 or chunk_ms % 5:
            raise ConfigError(f"chunk length must be a positive multiple of 5 ms, got {chunk_ms}")
        if slack_ms < 0 or inactive_ms <= 0:
            raise ConfigError("slack_ms must be >= 0 and inactive_ms > 0")
        self.format = fmt
        self.chunk_ms = chunk_ms
        if mixer is not None and mixer.rate != in_rate:
            raise ConfigError(f"the mixer runs at {mixer.rate} Hz but callers come at {in_rate} Hz")
        self.in_rate = in_rate
        self.mixer = mixer or Mixer(rate=in_rate)
        self._chunk_in = in_rate * chunk_ms // 1000
        self._ahead = self._chunk_in + in_rate * slack_ms // 1000
        self._inactive_ns = inactive_ms * 1_000_000
        self._last_write_ns: dict[str, int] = {}
        # When each caller's backlog last reached a whole chunk (None: it has less than a chunk waiting).
        self._complete_ns: dict[str, int | None] = {}
        self._resampler = Resampler(in_rate, fmt.rate)
        self._pad_first = not self._resampler.is_identity  # see "The chunk grid" above
        self._ns_per_out_sample = 1_000_000_000 / fmt.rate
        self.timer = timer or StageTimer()
        self.chunks = 0
        self.bytes_out = 0
        self.last_held_ns = 0

    @property
    def resampler(self) -> Resampler:
        return self._resampler

    def join(self, caller: str) -> None:
        self.mixer.join(caller)

    def leave(self, caller: str) -> None:
        self.mixer.leave(caller)
        self._last_write_ns.pop(caller, None)
        self._complete_ns.pop(caller, None)

    def write(self, caller: str, samples: Int16Array, now_ns: int) -> None:
        """Queue a caller's frame, received at ``now_ns``."""
        self.mixer.write(caller, samples)
        self._last_write_ns[caller] = now_ns
        if self._complete_ns.get(caller) is None and self.mixer.backlog(caller) >= self._chunk_in:
            self._complete_ns[caller] = now_ns

    def ready(self, now_ns: int) -> bool:
        """Every active caller has a whole chunk waiting, or one of them is ``slack_ms`` ahead."""
        mixer, chunk, recent = self.mixer, self._chunk_in, now_ns - self._inactive_ns
        fullest, emptiest_active = 0, None
        for caller in mixer.callers:
            backlog = mixer.backlog(caller)
            fullest = max(fullest, backlog)
            last = self._last_write_ns.get(caller)
            if last is not None and last >= recent:
                emptiest_active = backlog if emptiest_active is None else min(emptiest_active, backlog)
        if fullest >= self._ahead:
            return True
        return emptiest_active is not None and emptiest_active >= chunk

    def next_chunk(self, now_ns: int) -> bytes:
        """Mix, resample and encode one chunk cut at ``now_ns``; empty while a resampler fills its history."""
        completes = self._complete_ns
        earliest = min((t for t in completes.values() if t is not None), default=now_ns)
        align_wait = now_ns - earliest
        mixer, chunk = self.mixer, self._chunk_in
        mixed = mixer.mix(chunk)
        resampler = self._resampler
        resampled = resampler.push(mixed)
        if self._pad_first:
            self._pad_first = False
            owed = round(resampler.delay_samples)
            if owed > 0:
                resampled = np.concatenate((np.zeros(owed, dtype=np.int16), resampled))
        payload = self.format.encode(resampled) if resampled.size else b""
        for caller, t in completes.items():
            if t is not None:
                # Still a whole chunk waiting: it is complete as of now; otherwise it is not complete.
                completes[caller] = now_ns if mixer.backlog(caller) >= chunk else None
        resampler_hold = round(resampler.delay_samples * self._ns_per_out_sample)
        self.timer.add("uplink.align_wait", align_wait)
        self.timer.add("uplink.resampler_hold", resampler_hold)
        self.last_held_ns = align_wait + resampler_hold
        self.chunks += 1
        self.bytes_out += len(payload)
        return payload
