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
# The table filter looks each word up in a bit table indexed by bits shift..shift+N of its low half
# (pool and object addresses are 16-byte aligned on x64 and 8-byte aligned on x86, so the lowest
# bits carry little information). N grows with the number of values so that few unrelated words
# pass the filter; the table stays small enough for the CPU cache.
_TABLE_SHIFT = {8: 4, 4: 3}
_MIN_TABLE_BITS = 16
_MAX_TABLE_BITS = 22
# Long buffers are searched this many bytes at a time so that the temporaries stay in the CPU cache.
_BLOCK_BYTES = 1 << 21


class ValueSet:
    """Values to search for, prepared once for many buffers."""

    def __init__(self, values: Iterable[int], pointer_size: int):
        self.pointer_size = pointer_size
        self.dtype = np.dtype("<u8") if pointer_size == 8 else np.dtype("<u4")
        mask = (1 << (8 * pointer_size)) - 1
        unique = sorted({int(v) & mask for v in values})
        self.values = np.array(unique, dtype=self.dtype)
        self.table = None
        self._shift = _TABLE_SHIFT[pointer_size]
        self._key_mask = 0
        if len(unique) > _FEW_VALUES:
            bits = min(max(len(unique).bit_length() + 8, _MIN_TABLE_BITS), _MAX_TABLE_BITS)
            self._key_mask = (1 << bits) - 1
            self.table = np.zeros(1 << bits, dtype=bool)
            self.table[self._keys(self.values)] = True
        self._block_words = _BLOCK_BYTES // pointer_size

    def __len__(self) -> int:
        return len(self.values)

    def _keys(self, words: np.ndarray) -> np.ndarray:
        """Table index of each word, from its low 32 bits (a strided view: no copy of the words)."""
        low = words.view("<u4")[0::2] if self.pointer_size == 8 else words
        keys = np.right_shift(low, self._shift, dtype=np.intp)
        keys &= self._key_mask
        return keys

    def find(self, buffer) -> Tuple[np.ndarray, np.ndarray]:
        """Indices (in words) and values of every aligned word of ``buffer`` that is in the set.

        ``buffer`` is any object with the buffer protocol (bytes, mmap, memoryview); its length must
        be a multiple of the pointer size.
        """
        words = np.frombuffer(buffer, dtype=self.dtype)
        if len(self.values) == 0 or len(words) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=self.dtype)
        if len(words) <= self._block_words:
            return self._find_block(words)
        indices, found = [], []
        for start in range(0, len(words), self._block_words):
            block_indices, block_found = self._find_block(words[start:start + self._block_words])
            if len(block_indices):
                indices.append(block_indices + start)
                found.append(block_found)
        if not indices:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=self.dtype)
        return np.concatenate(indices), np.concatenate(found)

    def _find_block(self, words: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        if self.table is None:
            hit = words == self.values[0]
            for value in self.values[1:]:
                hit |= words == value
            indices = np.flatnonzero(hit)
        else:
            candidates = np.flatnonzero(self.table.take(self._keys(words), mode="clip"))
            values = words[candidates]
            position = np.searchsorted(self.values, values)
            position[position == len(self.values)] = 0
            indices = candidates[self.values[position] == values]
        return indices, words[indices]


def find_in_buffer(buffer, values: Iterable[int], pointer_size: int) -> List[Tuple[int, int]]:
    """(byte offset, value) of every aligned occurrence; convenience for one-off searches."""
    value_set = ValueSet(values, pointer_size)
    indices, found = value_set.find(buffer)
    return [(int(i) * pointer_size, int(v)) for i, v in zip(indices, found)]
