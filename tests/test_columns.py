"""payflow_lab.core.columns: a column reads like the list it stands for, whatever part of it is on disk."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payflow_lab.core.columns import Column

values = st.lists(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)), max_size=60)


@given(values, st.integers(min_value=1, max_value=7))
def test_a_column_reads_like_its_list(data: list[float | None], chunk: int) -> None:
    column = Column("d", data, optional=True, chunk=chunk)
    assert len(column) == len(data) and list(column) == data and column == data
    assert column.in_memory < chunk
    for start in range(-len(data) - 2, len(data) + 2, 3):
        for stop in range(-len(data) - 2, len(data) + 2, 4):
            assert column[start:stop] == data[start:stop]
            assert column[start:stop:2] == data[start:stop:2]
    for i in range(-len(data), len(data)):
        assert column[i] == data[i]


def test_integers_stay_integers_and_none_stays_none() -> None:
    column = Column("q", [3, None, -7, 2**40], optional=True, chunk=2)
    assert column[:] == [3, None, -7, 2**40]
    assert all(type(v) is int for v in column if v is not None)
    assert sum(v for v in Column("q", range(100), chunk=8)) == 4950


def test_bad_values_and_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="not optional"):
        Column("d").append(None)
    with pytest.raises(TypeError):
        Column("q").append(1.5)
    with pytest.raises(ValueError, match="typecode"):
        Column("f")
    with pytest.raises(ValueError, match="chunk"):
        Column("d", chunk=0)
    with pytest.raises(IndexError):
        Column("d", [1.0])[1]


def test_copies_hold_the_values_not_the_file() -> None:
    column = Column("d", [float(i) for i in range(50)], chunk=8)
    assert pickle.loads(pickle.dumps(column)) == column == copy.deepcopy(column)


def test_a_reader_in_another_thread_never_sees_a_gap() -> None:
    column = Column("q", chunk=16)
    stop = threading.Event()
    bad: list[str] = []

    def read() -> None:
        while not stop.is_set():
            size = len(column)
            got = column[:size]
            if got != list(range(size)):
                bad.append(f"{size}: {got[-5:]}")

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(20_000):
        column.append(i)
    stop.set()
    reader.join()
    assert not bad and column == list(range(20_000))


def test_the_last_value_can_be_amended_even_when_it_is_on_disk() -> None:
    column = Column("q", range(8), chunk=4)  # 8 values: both chunks on disk, none in memory
    assert column.in_memory == 0
    column.set_last(70)
    assert column == [0, 1, 2, 3, 4, 5, 6, 70]
    column.append(8)
    column.set_last(80)
    assert column == [0, 1, 2, 3, 4, 5, 6, 70, 80]
    with pytest.raises(IndexError):
        Column("d").set_last(1.0)
