"""A fixed-size ring of numeric rows: the status page's short memory.

All storage is one ``array('d')`` allocated up front, so the ring's size is known
before the first sample and never changes: pushing overwrites the oldest row once
the ring is full.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator, Sequence
from typing import Final

DOUBLE_BYTES: Final = 8


def ring_bytes(*, slots: int, width: int) -> int:
    """What one ring of ``slots`` rows of ``width`` floats costs: the object, its array and the array's header."""
    # sys.getsizeof on an array counts its header and its buffer; an empty one gives the header alone.
    return sys.getsizeof(array("d")) + slots * width * DOUBLE_BYTES + _RING_OBJECT_BYTES


class Ring:
    """``slots`` rows of ``width`` floats, oldest overwritten first; allocates nothing after ``__init__``."""

    __slots__ = ("_data", "_head", "_size", "slots", "width")

    def __init__(self, *, slots: int, width: int) -> None:
        if slots < 2 or width < 1:
            raise ValueError("a ring needs at least two slots and one column")
        self.slots = slots
        self.width = width
        # Repetition sizes the buffer exactly; array("d", bytes(n)) would over-allocate by a few percent.
        self._data = array("d", [0.0]) * (slots * width)
        self._head = 0  # the slot the next push writes
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, row: Sequence[float]) -> None:
        """Append one row; once full, the oldest row is overwritten."""
        if len(row) != self.width:
            raise ValueError(f"row of {len(row)} values for a ring of width {self.width}")
        start = self._head * self.width
        # Element by element: slice assignment from a list would build a temporary array.
        for offset, value in enumerate(row):
            self._data[start + offset] = value
        self._head = (self._head + 1) % self.slots
        self._size = min(self._size + 1, self.slots)

    def row(self, index: int) -> memoryview:
        """Row ``index`` counted from the oldest (0) to the newest (``len - 1``), as a read-only view."""
        if not 0 <= index < self._size:
            raise IndexError(index)
        slot = (self._head - self._size + index) % self.slots
        return memoryview(self._data)[slot * self.width : (slot + 1) * self.width].toreadonly()

    def rows(self) -> Iterator[memoryview]:
        """Every row, oldest first."""
        for index in range(self._size):
            yield self.row(index)

    def column(self, column: int) -> list[float]:
        """One column of every row, oldest first."""
        first = self._head - self._size
        return [self._data[((first + i) % self.slots) * self.width + column] for i in range(self._size)]

    def nbytes(self) -> int:
        """The memory the ring holds now (which is all it will ever hold)."""
        return sys.getsizeof(self) + sys.getsizeof(self._data)


_RING_OBJECT_BYTES: Final = sys.getsizeof(Ring.__new__(Ring))
