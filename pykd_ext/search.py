"""Batched pointer search: find many pointer-sized values in one pass over a buffer.

This is the engine under every source that holds memory itself (snapshots, dump files): the hunt
searches all the addresses of one level of its walk at once, so the number of passes over memory
depends on the depth of the walk, not on how many objects it finds.
"""
from __future__ import annotations

from typing import Iterable, List, Tuple

import numpy as np

# Up to this many values, comparing each one is cheaper than the table filter below.
_FEW_VALUES = 4
# The table filter indexes a bit table with 16 bits of each word (bits 4..19: pool and object
# addresses are at least 16-byte aligned on x64, so bits 0..3 carry little information).
_TABLE_BITS = 16
_TABLE_SHIFT = 4


class ValueSet:
    """Values to search for, prepared once for many buffers."""

    def __init__(self, values: Iterable[int], pointer_size: int):
        self.pointer_size = pointer_size
        self.dtype = np.dtype("<u8") if pointer_size == 8 else np.dtype("<u4")
        mask = (1 << (8 * pointer_size)) - 1
        unique = sorted({int(v) & mask for v in values})
        self.values = np.array(unique, dtype=self.dtype)
        self.table = None
        if len(unique) > _FEW_VALUES:
            self.table = np.zeros(1 << _TABLE_BITS, dtype=bool)
            self.table[(self.values >> _TABLE_SHIFT) & ((1 << _TABLE_BITS) - 1)] = True

    def __len__(self) -> int:
        return len(self.values)

    def find(self, buffer) -> Tuple[np.ndarray, np.ndarray]:
        """Indices (in words) and values of every aligned word of ``buffer`` that is in the set.

        ``buffer`` is any object with the buffer protocol (bytes, mmap slice, memoryview); its
        length must be a multiple of the pointer size.
        """
        words = np.frombuffer(buffer, dtype=self.dtype)
        if len(self.values) == 0 or len(words) == 0:
            empty = np.empty(0, dtype=np.int64)
            return empty, np.empty(0, dtype=self.dtype)
        if self.table is None:
            hit = words == self.values[0]
            for value in self.values[1:]:
                hit |= words == value
            indices = np.flatnonzero(hit)
        else:
            keys = (words >> _TABLE_SHIFT) & ((1 << _TABLE_BITS) - 1)
            candidates = np.flatnonzero(self.table[keys])
            exact = np.isin(words[candidates], self.values, assume_unique=False)
            indices = candidates[exact]
        return indices, words[indices]


def find_in_buffer(buffer, values: Iterable[int], pointer_size: int) -> List[Tuple[int, int]]:
    """(byte offset, value) of every aligned occurrence; convenience for one-off searches."""
    value_set = ValueSet(values, pointer_size)
    indices, found = value_set.find(buffer)
    return [(int(i) * pointer_size, int(v)) for i, v in zip(indices, found)]
