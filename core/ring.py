"""A fixed-capacity FIFO of samples over one preallocated numpy array.

Rules of this module:

- The capacity is fixed at construction; memory is allocated once and never grows.
- Every ring has a named :class:`OverflowPolicy`, chosen by its owner (there is no default, on purpose):
  ``DROP_OLDEST`` makes room by discarding the oldest samples (live input, where fresh beats complete);
  ``REFUSE`` writes nothing and raises :class:`~core.errors.BufferOverflowError` with the numbers.
  Both are counted: ``overflow_events`` plus ``dropped_samples`` or ``refused_samples``.
- "Not yet" is a return value: reading more than is available returns fewer samples, possibly none.
- Every operation is at most two slice copies (the wrap point splits a span in two); no per-sample loops.
- Reads return fresh arrays, never views of the storage: a view would change under the next write.
"""

from __future__ import annotations

import enum
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from core.errors import BufferOverflowError, ConfigError

__all__ = ["OverflowPolicy", "RingBuffer"]

SampleT = TypeVar("SampleT", np.int16, np.float32)


class OverflowPolicy(enum.Enum):
    """What a full ring does with a write that does not fit."""

    DROP_OLDEST = "drop_oldest"
    REFUSE = "refuse"


class RingBuffer(Generic[SampleT]):
    """FIFO of ``capacity`` samples of ``dtype`` (int16 or float32) with an explicit overflow policy."""

    __slots__ = (
        "_buf",
        "_capacity",
        "_dtype",
        "_policy",
        "_read",
        "_size",
        "dropped_samples",
        "overflow_events",
        "refused_samples",
        "samples_discarded",
        "samples_read",
        "samples_written",
    )

    def __init__(self, capacity: int, *, dtype: type[SampleT], policy: OverflowPolicy) -> None:
        if capacity <= 0:
            raise ConfigError(f"ring capacity must be positive, got {capacity}")
        self._capacity = capacity
        self._buf: npt.NDArray[SampleT] = np.zeros(capacity, dtype=dtype)
        self._dtype: np.dtype[SampleT] = self._buf.dtype
        self._policy = policy
        self._read = 0  # index of the oldest sample
        self._size = 0
        # Identity: samples_written == samples_read + samples_discarded + dropped_samples + available
        self.samples_written = 0
        self.samples_read = 0
        self.samples_discarded = 0
        self.overflow_events = 0
        self.dropped_samples = 0  # DROP_OLDEST: old samples overwritten, or input longer than the ring
        self.refused_samples = 0  # REFUSE: samples of writes that were turned away

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def dtype(self) -> np.dtype[SampleT]:
        return self._dtype

    @property
    def policy(self) -> OverflowPolicy:
        return self._policy

    @property
    def available(self) -> int:
        """Samples that can be read now."""
        return self._size

    @property
    def free(self) -> int:
        """Samples that can be written without overflowing."""
        return self._capacity - self._size

    def __len__(self) -> int:
        return self._size

    def write(self, samples: npt.NDArray[SampleT]) -> int:
        """Append ``samples``; returns how many samples were dropped to make room (0 when they fit).

        With ``REFUSE`` a write that does not fit is rejected whole (nothing is written) so the caller can
        decide what to do with it; with ``DROP_OLDEST`` it always succeeds.
        """
        if samples.dtype != self._dtype:
            # Assigning float32 into int16 storage would truncate silently; that is always a wiring bug.
            raise TypeError(f"ring of {self._dtype} cannot take {samples.dtype} samples")
        n = n_in = samples.shape[0]
        if n == 0:
            return 0
        dropped = 0
        if n > self._capacity - self._size:
            self.overflow_events += 1
            if self._policy is OverflowPolicy.REFUSE:
                self.refused_samples += n
                raise BufferOverflowError(
                    f"ring full ({self._size} held, {self._capacity - self._size} free)",
                    capacity=self._capacity,
                    requested=n,
                )
            if n >= self._capacity:
                # Only the newest ``capacity`` samples can survive; everything held goes too.
                dropped = self._size + n - self._capacity
                samples = samples[n - self._capacity :]
                n = self._capacity
                self._read = 0
                self._size = 0
            else:
                dropped = n - (self._capacity - self._size)
                self._read = (self._read + dropped) % self._capacity
                self._size -= dropped
            self.dropped_samples += dropped
        capacity = self._capacity
        start = self._read + self._size
        if start >= capacity:
            start -= capacity
        end = start + n
        if end <= capacity:
            self._buf[start:end] = samples
        else:
            first = capacity - start
            self._buf[start:] = samples[:first]
            self._buf[: end - capacity] = samples[first:]
        self._size += n
        self.samples_written += n_in
        return dropped

    def peek(self, n: int) -> npt.NDArray[SampleT]:
        """Copy of up to ``n`` oldest samples, without consuming them."""
        n = max(0, min(n, self._size))
        end = self._read + n
        if end <= self._capacity:
            return self._buf[self._read : end].copy()
        return np.concatenate((self._buf[self._read :], self._buf[: end - self._capacity]))

    def read_into(self, out: npt.NDArray[SampleT]) -> int:
        """Move up to ``len(out)`` oldest samples into ``out[:k]``; returns ``k``. Allocates nothing."""
        if out.dtype != self._dtype:
            raise TypeError(f"ring of {self._dtype} cannot read into {out.dtype}")
        n: int = min(out.shape[0], self._size)
        start, capacity = self._read, self._capacity
        end = start + n
        if end <= capacity:
            out[:n] = self._buf[start:end]
        else:
            first = capacity - start
            out[:first] = self._buf[start:]
            out[first:n] = self._buf[: end - capacity]
        if end >= capacity:
            end -= capacity
        self._size -= n
        # An emptied ring restarts at index 0, so the next reads stay in one slice more often.
        self._read = end if self._size else 0
        self.samples_read += n
        return n

    def read(self, n: int) -> npt.NDArray[SampleT]:
        """Remove and return up to ``n`` oldest samples (fewer, possibly none, if fewer are held)."""
        out = self.peek(n)
        self._consume(out.shape[0])
        self.samples_read += out.shape[0]
        return out

    def discard(self, n: int) -> int:
        """Drop up to ``n`` oldest samples without copying them; returns how many went."""
        n = max(0, min(n, self._size))
        self._consume(n)
        self.samples_discarded += n
        return n

    def clear(self) -> int:
        """Drop everything held; returns how many samples that was."""
        return self.discard(self._size)

    def _consume(self, n: int) -> None:
        self._read = (self._read + n) % self._capacity
        self._size -= n
        if self._size == 0:
            # Restarting at index 0 keeps the next reads in one slice more often; costs nothing.
            self._read = 0
