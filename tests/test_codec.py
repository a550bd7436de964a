"""PCM16 and G.711 μ-law against the standard's code points, a scalar reference and the round-trip bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.codec import pcm16_decode, pcm16_encode, ulaw_decode, ulaw_encode
from core.errors import ProtocolError

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)

# The first two and the last rows of the canonical G.711 μ-law expansion table (codes 0x00-0x1F, 0x70-0x7F
# and their positive twins 0x80-0x9F, 0xF0-0xFF), as printed in every reference implementation.
TABLE_00 = [-32124, -31100, -30076, -29052, -28028, -27004, -25980, -24956,
            -23932, -22908, -21884, -20860, -19836, -18812, -17788, -16764]
TABLE_10 = [-15996, -15484, -14972, -14460, -13948, -13436, -12924, -12412,
            -11900, -11388, -10876, -10364, -9852, -9340, -8828, -8316]
TABLE_70 = [-120, -112, -104, -96, -88, -80, -72, -64, -56, -48, -40, -32, -24, -16, -8, 0]


def reference_linear2ulaw(sample: int) -> int:
    """The CCITT/Reese scalar routine, transcribed loop for loop: an oracle independent of our tables."""
    exp_lut = [0, 0, 1, 1] + [2] * 4 + [3] * 8 + [4] * 16 + [5] * 32 + [6] * 64 + [7] * 128
    sign = 0x80 if sample < 0 else 0
    if sign:
        sample = -sample
    sample = min(sample, 32635) + 0x84
    exponent = exp_lut[(sample >> 7) & 0xFF]
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def reference_ulaw2linear(code: int) -> int:
    exp_lut = [0, 132, 396, 924, 1980, 4092, 8316, 16764]
    code = ~code & 0xFF
    exponent = (code >> 4) & 0x07
    sample = exp_lut[exponent] + ((code & 0x0F) << (exponent + 3))
    return -sample if code & 0x80 else sample


def test_ulaw_code_points() -> None:
    samples = np.array([0, 32767, -32768, 1, -1], dtype=np.int16)
    assert ulaw_encode(samples) == bytes([0xFF, 0x80, 0x00, 0xFF, 0x7F])
    assert ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00])).tolist() == [0, 0, 32124, -32124]


def test_ulaw_decode_table_rows() -> None:
    table = ulaw_decode(bytes(range(256))).tolist()
    assert table[0x00:0x10] == TABLE_00
    assert table[0x10:0x20] == TABLE_10
    assert table[0x70:0x80] == TABLE_70
    assert table[0x80:0x90] == [-v for v in TABLE_00]
    assert table[0xF0:0x100] == [-v for v in TABLE_70]
    assert table == [reference_ulaw2linear(code) for code in range(256)]


def test_ulaw_encode_matches_reference_for_every_int16() -> None:
    expected = bytes(reference_linear2ulaw(int(x)) for x in ALL_INT16)
    assert ulaw_encode(ALL_INT16) == expected


def test_ulaw_is_symmetric() -> None:
    positive = np.arange(1, 32768, dtype=np.int16)
    pos = np.frombuffer(ulaw_encode(positive), dtype=np.uint8)
    neg = np.frombuffer(ulaw_encode(-positive), dtype=np.uint8)
    assert np.array_equal(neg, pos ^ 0x80)


def test_ulaw_round_trip_within_half_a_step_per_segment() -> None:
    codes = np.frombuffer(ulaw_encode(ALL_INT16), dtype=np.uint8)
    error = np.abs(ulaw_decode(codes.tobytes()).astype(np.int32) - ALL_INT16.astype(np.int32))
    segment = ((~codes) >> 4) & 0x07
    inside = np.abs(ALL_INT16.astype(np.int32)) <= 32635
    for e in range(8):
        in_segment = inside & (segment == e)
        assert in_segment.any()
        assert error[in_segment].max() == 4 << e, f"segment {e}"
    # Past the clip point the error grows to the distance from the top level, 32124.
    assert error[~inside].max() == 32768 - 32124


def test_ulaw_decode_is_monotonic_in_magnitude() -> None:
    decoded = ulaw_decode(ulaw_encode(ALL_INT16)).astype(np.int32)
    assert np.all(np.diff(decoded) >= 0)


def test_ulaw_empty_and_dtype() -> None:
    assert ulaw_encode(np.zeros(0, dtype=np.int16)) == b""
    assert ulaw_decode(b"").dtype == np.int16
    with pytest.raises(TypeError):
        ulaw_encode(np.zeros(4, dtype=np.int32))


@given(st.lists(st.integers(-32768, 32767), max_size=300))
def test_pcm16_round_trip(values: list[int]) -> None:
    samples = np.array(values, dtype=np.int16)
    data = pcm16_encode(samples)
    assert len(data) == 2 * len(values)
    decoded = pcm16_decode(data)
    assert decoded.dtype == np.int16
    assert decoded.tolist() == values


def test_pcm16_is_little_endian_and_writable() -> None:
    assert pcm16_encode(np.array([1, -2, 0x1234], dtype=np.int16)) == b"\x01\x00\xfe\xff\x34\x12"
    decoded = pcm16_decode(b"\x01\x00\xfe\xff")
    assert decoded.tolist() == [1, -2]
    decoded[0] = 7  # a fresh array, not a read-only view of the payload


def test_pcm16_odd_length_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError) as caught:
        pcm16_decode(b"\x00\x01\x02")
    assert caught.value.kind == "odd_length_pcm"


def test_pcm16_refuses_other_dtypes() -> None:
    with pytest.raises(TypeError):
        pcm16_encode(np.array([1.5], dtype=np.float32))


def test_pcm16_encode_accepts_strided_views() -> None:
    samples = np.arange(10, dtype=np.int16)
    assert pcm16_decode(pcm16_encode(samples[::2])).tolist() == [0, 2, 4, 6, 8]
