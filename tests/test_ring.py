"""RingBuffer against a deque model: FIFO order, capacity, overflow policies and their counters."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import BufferOverflowError, ConfigError
from core.ring import OverflowPolicy, RingBuffer

# An operation is ("write", n) | ("read", n) | ("read_into", n) | ("peek", n) | ("discard", n) | ("clear", 0).
operations = st.lists(
    st.tuples(
        st.sampled_from(["write", "write", "read", "read_into", "peek", "discard", "clear"]), st.integers(0, 40)
    ),
    max_size=60,
)


def check_identity(ring: RingBuffer[Any]) -> None:
    assert ring.samples_written == (
        ring.samples_read + ring.samples_discarded + ring.dropped_samples + ring.available
    )
    assert 0 <= ring.available <= ring.capacity
    assert ring.available + ring.free == ring.capacity


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 32), ops=operations, float_ring=st.booleans())
def test_drop_oldest_behaves_like_a_bounded_deque(capacity: int, ops: list[tuple[str, int]],
                                                  float_ring: bool) -> None:
    dtype: Any = np.float32 if float_ring else np.int16
    ring: RingBuffer[Any] = RingBuffer(capacity, dtype=dtype, policy=OverflowPolicy.DROP_OLDEST)
    model: deque[int] = deque(maxlen=capacity)
    counter = 0
    dropped = 0
    for op, n in ops:
        if op == "write":
            values = list(range(counter, counter + n))
            counter += n
            expect_drop = max(0, len(model) + n - capacity)
            model.extend(values)
            dropped += expect_drop
            assert ring.write(np.array(values, dtype=dtype)) == expect_drop
        elif op in ("read", "read_into", "peek"):
            if op == "read_into":
                out = np.full(n, -1, dtype=dtype)
                got = out[: ring.read_into(out)]
            else:
                got = ring.read(n) if op == "read" else ring.peek(n)
            want = list(model)[:n]
            assert got.dtype == dtype
            assert got.tolist() == want
            if op != "peek":
                for _ in want:
                    model.popleft()
        elif op == "discard":
            want_n = min(n, len(model))
            assert ring.discard(n) == want_n
            for _ in range(want_n):
                model.popleft()
        else:
            assert ring.clear() == len(model)
            model.clear()
        assert ring.available == len(model)
        assert ring.dropped_samples == dropped
        check_identity(ring)
    assert ring.peek(capacity).tolist() == list(model)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 32), ops=operations)
def test_refuse_rejects_whole_writes_and_keeps_contents(capacity: int, ops: list[tuple[str, int]]) -> None:
    ring = RingBuffer(capacity, dtype=np.int16, policy=OverflowPolicy.REFUSE)
    model: deque[int] = deque()
    counter = 0
    refused = events = 0
    for op, n in ops:
        if op == "write":
            values = np.arange(counter, counter + n, dtype=np.int16)
            counter += n
            if len(model) + n > capacity:
                with pytest.raises(BufferOverflowError) as caught:
                    ring.write(values)
                assert (caught.value.capacity, caught.value.requested) == (capacity, n)
                refused += n
                events += 1
            else:
                assert ring.write(values) == 0
                model.extend(values.tolist())
        elif op in ("read", "read_into"):
            got = ring.read(n).tolist()
            assert got == [model.popleft() for _ in range(min(n, len(model)))]
        elif op == "peek":
            assert ring.peek(n).tolist() == list(model)[:n]
        elif op == "discard":
            assert ring.discard(n) == min(n, len(model))
            for _ in range(min(n, len(model))):
                model.popleft()
        else:
            ring.clear()
            model.clear()
        assert ring.available == len(model)
        assert (ring.refused_samples, ring.overflow_events, ring.dropped_samples) == (refused, events, 0)
        check_identity(ring)


def test_read_more_than_available_returns_fewer() -> None:
    ring = RingBuffer(8, dtype=np.int16, policy=OverflowPolicy.REFUSE)
    assert ring.read(4).shape == (0,)
    ring.write(np.array([1, 2, 3], dtype=np.int16))
    assert ring.read(10).tolist() == [1, 2, 3]
    assert ring.read(1).size == 0


def test_write_longer_than_capacity_keeps_the_newest() -> None:
    ring = RingBuffer(4, dtype=np.int16, policy=OverflowPolicy.DROP_OLDEST)
    ring.write(np.array([1, 2], dtype=np.int16))
    assert ring.write(np.arange(10, 20, dtype=np.int16)) == 2 + 6
    assert ring.read(4).tolist() == [16, 17, 18, 19]
    assert (ring.overflow_events, ring.dropped_samples) == (1, 8)


def test_reads_are_copies_not_views() -> None:
    ring = RingBuffer(4, dtype=np.float32, policy=OverflowPolicy.DROP_OLDEST)
    ring.write(np.array([1, 2, 3, 4], dtype=np.float32))
    seen = ring.peek(2)
    ring.write(np.array([9, 9], dtype=np.float32))  # overwrites the storage that held 1 and 2
    assert seen.tolist() == [1.0, 2.0]


def test_wrong_dtype_and_capacity_are_refused() -> None:
    ring = RingBuffer(4, dtype=np.int16, policy=OverflowPolicy.DROP_OLDEST)
    with pytest.raises(TypeError):
        ring.write(np.zeros(2, dtype=np.float32))
    with pytest.raises(ConfigError):
        RingBuffer(0, dtype=np.int16, policy=OverflowPolicy.REFUSE)


def test_refuse_error_message_carries_the_numbers() -> None:
    ring = RingBuffer(5, dtype=np.int16, policy=OverflowPolicy.REFUSE)
    ring.write(np.zeros(3, dtype=np.int16))
    with pytest.raises(BufferOverflowError, match=r"capacity 5, requested 4"):
        ring.write(np.zeros(4, dtype=np.int16))
    assert ring.available == 3


def test_read_into_exactly_to_the_end_of_storage_wraps_cleanly() -> None:
    ring = RingBuffer(4, dtype=np.int16, policy=OverflowPolicy.REFUSE)
    ring.write(np.array([1, 2, 3], dtype=np.int16))
    ring.discard(2)  # read index 2
    ring.write(np.array([4, 5], dtype=np.int16))  # storage [5, _, 3, 4]
    out = np.zeros(2, dtype=np.int16)
    assert ring.read_into(out) == 2 and out.tolist() == [3, 4]  # ends exactly at the storage's end
    ring.write(np.array([6, 7], dtype=np.int16))
    assert ring.peek(3).tolist() == [5, 6, 7]
    assert ring.free == 1
