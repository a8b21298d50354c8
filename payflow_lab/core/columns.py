"""Columns of measurements that keep their newest values in memory and the rest on disk.

A run records one row per simulated second and one latency per payment and
per side effect. Over a workshop afternoon that is small; over a four-hour
outage it is the largest thing in the process, and it only grows. A
:class:`Column` keeps every value (nothing is sampled away, so percentiles
stay exact), but only the newest ``chunk`` of them in memory: each full chunk
is appended to an anonymous temporary file (already unlinked, so nothing is
left behind even if the process is killed) and read back on demand, a chunk
at a time. The memory a run takes then stays flat however long it lasts.

A column reads like the ``array`` it replaces: ``len``, indexing (negative
indices too), slicing (a list), iteration, ``==`` against any sequence.
``None`` is stored as a sentinel in columns made with ``optional=True`` (the
p50 of a second in which nothing completed). One thread appends (the
simulation's); others (a notebook dashboard, a metrics scrape) may read at the
same time: a lock keeps a reader from seeing a chunk halfway to disk.

Why not numpy's memmap or a library: the values arrive one at a time for
hours, a memmap needs its size up front, and the standard library's
``array.tofile``/``frombytes`` do everything needed in a few lines.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from array import array
from collections.abc import Iterable, Iterator
from typing import IO, Any, overload

__all__ = ["CHUNK", "Column"]

#: Values per column kept in memory before they move to disk (8 KiB of doubles).
CHUNK = 1024
_INT_NONE = -(2**63)


class Column:
    """An append-only column of numbers (``typecode`` ``"d"`` for floats, ``"q"`` for integers)."""

    __slots__ = ("typecode", "optional", "chunk", "_hot", "_cold", "_file", "_lock", "_cache_at", "_cache")

    def __init__(
        self, typecode: str = "d", values: Iterable[Any] = (), *, optional: bool = False, chunk: int = CHUNK
    ) -> None:
        if typecode not in ("d", "q"):
            raise ValueError(f"typecode must be 'd' (floats) or 'q' (integers), got {typecode!r}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a whole number of values >= 1, got {chunk!r}")
        self.typecode = typecode
        self.optional = optional
        self.chunk = chunk
        self._hot: array[Any] = array(typecode)
        self._cold = 0  # values on disk, always a multiple of chunk
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._cache_at = -1  # which chunk on disk _cache holds
        self._cache: array[Any] = array(typecode)
        for value in values:
            self.append(value)

    # ------------------------------------------------------------------ writing
    def append(self, value: Any) -> None:
        value = self._stored(value)
        self._hot.append(value)
        if len(self._hot) >= self.chunk:
            self._spill()

    def set_last(self, value: Any) -> None:
        """Replace the last value (a row amended at the end of a run). The column must not be empty."""
        value = self._stored(value)
        with self._lock:
            if self._hot:
                self._hot[-1] = value
            elif self._cold:
                assert self._file is not None
                item = array(self.typecode, [value])  # the last value is on disk: overwrite it in place
                os.pwrite(self._file.fileno(), item.tobytes(), (self._cold - 1) * item.itemsize)
                self._cache_at = -1
            else:
                raise IndexError("set_last on an empty column")

    def _stored(self, value: Any) -> Any:
        """``value`` as stored: ``None`` becomes the column's sentinel (NaN, or the smallest integer)."""
        if value is None:
            if not self.optional:
                raise ValueError("None in a column that is not optional")
            return math.nan if self.typecode == "d" else _INT_NONE
        return value

    def _spill(self) -> None:
        with self._lock:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="payflow-column-")
            self._file.seek(0, os.SEEK_END)
            self._hot.tofile(self._file)
            self._file.flush()
            self._cold += len(self._hot)
            self._hot = array(self.typecode)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        with self._lock:
            return self._cold + len(self._hot)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        with self._lock:
            size = self._cold + len(self._hot)
            if isinstance(index, slice):
                start, stop, step = index.indices(size)
                if step != 1:
                    return [self._read(i) for i in range(start, stop, step)]
                return self._range(start, stop)
            if index < 0:
                index += size
            if not 0 <= index < size:
                raise IndexError("column index out of range")
            return self._read(index)

    def __iter__(self) -> Iterator[Any]:
        size = len(self)
        for start in range(0, size, self.chunk):
            yield from self[start : min(size, start + self.chunk)]

    @property
    def in_memory(self) -> int:
        """How many of the values are in memory now (fewer than ``chunk``); the rest are on disk."""
        return len(self._hot)

    def tolist(self) -> list[Any]:
        return self[:]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Column, list, tuple, array)):
            return self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Column({self.typecode!r}, {len(self)} values, {self._cold} on disk)"

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy (pickle, deepcopy) holds the values, not the temporary file.
        return (_rebuild, (self.typecode, self.optional, self.chunk, self.tolist()))

    # -------------------------------------------------------------- internals (lock held)
    def _value(self, raw: Any) -> Any:
        if self.optional and (raw == _INT_NONE if self.typecode == "q" else raw != raw):
            return None
        return raw

    def _read(self, index: int) -> Any:
        if index >= self._cold:
            return self._value(self._hot[index - self._cold])
        return self._value(self._chunk_on_disk(index // self.chunk)[index % self.chunk])

    def _range(self, start: int, stop: int) -> list[Any]:
        out: list[Any] = []
        index = start
        while index < min(stop, self._cold):
            number = index // self.chunk
            block = self._chunk_on_disk(number)
            first = index - number * self.chunk
            last = min(stop, (number + 1) * self.chunk) - number * self.chunk
            out.extend(block[first:last])
            index = number * self.chunk + last
        if stop > self._cold:
            out.extend(self._hot[max(0, start - self._cold) : stop - self._cold])
        if self.optional:
            return [self._value(v) for v in out]
        return out

    def _chunk_on_disk(self, number: int) -> array[Any]:
        if number != self._cache_at:
            assert self._file is not None
            block = array(self.typecode)
            size = block.itemsize * self.chunk
            block.frombytes(os.pread(self._file.fileno(), size, number * size))
            self._cache, self._cache_at = block, number
        return self._cache


def _rebuild(typecode: str, optional: bool, chunk: int, values: list[Any]) -> Column:
    return Column(typecode, values, optional=optional, chunk=chunk)
