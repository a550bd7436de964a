"""The demo's pieces that need no LiveKit: its stand-in for ASR and the stereo recording."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from scripts.demo import Script, write_wav


def test_the_script_hands_out_the_words_in_order_and_placeholders_for_short_sounds() -> None:
    script = Script()
    script.spoken("first line")
    script.spoken("second line")
    speech = np.ones(16000, np.int16)
    assert script.transcribe(speech[:1000], 16000) is None  # a click: the brain gets the placeholder
    assert script.transcribe(speech, 16000) == "first line"
    assert script.transcribe(speech, 16000) == "second line"
    assert script.transcribe(speech, 16000) is None  # nothing scripted left


def test_the_recording_is_stereo_callers_left_agent_right(tmp_path: Path) -> None:
    left = np.array([1, 2, 3], np.int16)
    right = np.array([-1, -2, -3], np.int16)
    write_wav(tmp_path / "call.wav", left, right, rate=48000)
    with wave.open(str(tmp_path / "call.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, 48000, 3)
        frames = np.frombuffer(w.readframes(3), "<i2").reshape(-1, 2)
    assert frames[:, 0].tolist() == [1, 2, 3] and frames[:, 1].tolist() == [-1, -2, -3]
