"""Batched pointer search: find many pointer-sized values in one pass over a buffer.

This is the engine under every source that holds memory itself (snapshots, dump files): the hunt
searches all the addresses of one level of its walk at once, so the number of passes over memory
depends on the depth of the walk, not on how many objects it finds.

In the same pass a search can collect the headers of one kind of I/O manager object (``ObjectHeaders``:
the IRPs, whose MdlAddress follows the header), so that the hunt joins IRPs to MDLs without searching
for each MDL.

Two engines give the same answers: the compiled ``_wordscan`` extension (built by ``pip install``
where a C compiler is available; it runs without the GIL, so a dump's windows can be searched on
several cores) and numpy, used where the extension is missing.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional, Tuple

import numpy as np

from .targets.base import ObjectHeaders

try:
    from . import _wordscan
except ImportError:  # installed without a C compiler (or on a big-endian host): numpy searches
    _wordscan = None

ENGINES = ("compiled", "numpy")
# Whether the compiled engine reads files itself (ValueSet.find_in_file): where the OS has POSIX
# positioned reads; elsewhere the caller reads and calls find().
compiled_reads_files = _wordscan is not None and hasattr(_wordscan, "find_in_file")
# Whether the compiled engine's find() may be given a view of a mapped file: a page the file no longer
# has (cut short meanwhile) or cannot read then raises OSError rather than SIGBUS (POSIX signals; where
# they exist, so do positioned reads, and the engine falls back on them for a file it cannot map).
compiled_searches_mappings = compiled_reads_files and bool(getattr(_wordscan, "GUARDS_BUS_ERRORS", 0))
# The engine a ValueSet uses unless told otherwise.
preferred_engine = "compiled" if _wordscan is not None else "numpy"

# numpy engine. Up to this many values, comparing each one is cheaper than the table filter below.
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
# When all the 64-bit values share at most this many high halves (the usual case: the objects of one
# hunt level live in one or two 4 GiB regions of pool), a compare of each word's high half against
# them comes first, and only the words that pass are looked up in the table.
_MAX_HIGH_HALVES = 2


class Found(NamedTuple):
    """What a search found in a buffer: the word indices and words of the values and, when the ValueSet
    collects object headers, the word indices of the headers and the word after each."""

    indices: np.ndarray
    words: np.ndarray
    header_indices: np.ndarray
    header_next: np.ndarray


def header_sizes_bitmap(headers: ObjectHeaders) -> bytes:
    """The sizes of ``headers`` as a bitmap of 65536 bits (bit n of byte n // 8 for Size n), for both engines."""
    bits = np.zeros(1 << 16, dtype=bool)
    bits[[size for size in headers.sizes if 0 <= size <= 0xFFFF]] = True
    return np.packbits(bits, bitorder="little").tobytes()


class ValueSet:
    """Values to search for (and object headers to collect), prepared once for many buffers."""

    def __init__(self, values: Iterable[int], pointer_size: int, engine: Optional[str] = None,
                 headers: Optional[ObjectHeaders] = None):
        self.pointer_size = pointer_size
        self.dtype = np.dtype("<u8") if pointer_size == 8 else np.dtype("<u4")
        mask = (1 << (8 * pointer_size)) - 1
        unique = sorted({int(v) & mask for v in values})
        self.values = np.array(unique, dtype=self.dtype)
        self.headers = headers
        self._header_bitmap = header_sizes_bitmap(headers) if headers is not None else b""
        if headers is not None and not 0 <= headers.type <= 0xFFFF:
            raise ValueError(f"an object header type is 16 bits, not {headers.type:#x}")
        self.engine = engine or preferred_engine
        if self.engine not in ENGINES:
            raise ValueError(f"unknown search engine {self.engine!r} (one of {', '.join(ENGINES)})")
        if self.engine == "compiled":
            if _wordscan is None:
                raise ValueError("the compiled search engine is not built in this installation")
            self._filter = _wordscan.filter_table(self.values, pointer_size)
        else:
            self._prepare_numpy()
        self.reads_files = self.engine == "compiled" and compiled_reads_files  # find_in_file() works
        # find_in_mapping() works (see compiled_searches_mappings).
        self.searches_mappings = self.engine == "compiled" and compiled_searches_mappings

    def _prepare_numpy(self) -> None:
        self.table = None
        self._shift = _TABLE_SHIFT[self.pointer_size]
        self._key_mask = 0
        if len(self.values) > _FEW_VALUES:
            bits = min(max(len(self.values).bit_length() + 8, _MIN_TABLE_BITS), _MAX_TABLE_BITS)
            self._key_mask = (1 << bits) - 1
            self.table = np.zeros(1 << bits, dtype=bool)
            self.table[self._keys(self.values)] = True
        self._high_halves = None
        if self.table is not None and self.pointer_size == 8:
            high_halves = np.unique(self.values >> np.uint64(32)).astype("<u4")
            if len(high_halves) <= _MAX_HIGH_HALVES:
                self._high_halves = high_halves
        self._block_words = _BLOCK_BYTES // self.pointer_size

    def __len__(self) -> int:
        return len(self.values)

    def _keys(self, words: np.ndarray) -> np.ndarray:
        """Table index of each word: low bits from ``shift`` up, XORed with the high bits.

        The XOR moves kernel addresses away from the small integers and zeros that fill memory, even
        when an address's low bits look like a small integer (an object near a 4 MiB-aligned pool
        region start). The halves are strided views of the words: nothing is copied.
        """
        if self.pointer_size == 8:
            halves = words.view("<u4")
            keys = halves[0::2] >> np.uint32(self._shift)
            keys ^= halves[1::2]
        else:
            keys = words >> np.uint32(self._shift)
            keys ^= words >> np.uint32(20)
        keys &= np.uint32(self._key_mask)
        return keys

    def find(self, buffer) -> Found:
        """Every aligned word of ``buffer`` that is in the set (indices in words, and the words) and, when the
        set collects object headers, every header at an even word index with the word that follows it.

        ``buffer`` is any object with the buffer protocol (bytes, mmap, memoryview); its length must
        be a multiple of the pointer size. (A mapped file goes to find_in_mapping.)
        """
        words = np.frombuffer(buffer, dtype=self.dtype)
        if self.engine == "compiled":
            if not words.flags.aligned:  # the extension reads words at their natural alignment
                words = words.copy()
            return self._compiled_hits(_wordscan.find(words, self.values, self._filter, self.pointer_size, False,
                                                      *self._header_arguments()))
        indices, found = self._find_values(words)
        return Found(indices, found, *self._find_headers(words))

    def find_in_mapping(self, view) -> Found:
        """find() over a view of a mapped file (``searches_mappings`` engines only), aligned to the pointer size.

        A page the file no longer has or cannot read raises OSError (EIO) instead of killing the process
        with SIGBUS. Nothing keeps the view once this returns, so the mapping can be closed.
        """
        return self._compiled_hits(_wordscan.find(view, self.values, self._filter, self.pointer_size, True,
                                                  *self._header_arguments()))

    def find_in_file(self, fileno: int, offset: int, length: int) -> Tuple[Found, int]:
        """find() over bytes ``[offset, offset + length)`` of an open file (``reads_files`` engines only).

        Returns what was found (word indices from ``offset``) and the bytes read (fewer than ``length``
        when the file ends sooner). The read and the search run without the GIL.
        """
        *hits, done = _wordscan.find_in_file(fileno, offset, length, self.values, self._filter, self.pointer_size,
                                             *self._header_arguments())
        return self._compiled_hits(tuple(hits)), done

    def _header_arguments(self) -> Tuple:
        """The compiled engine's header_type and header_sizes arguments (none without headers)."""
        return () if self.headers is None else (self.headers.type, self._header_bitmap)

    def _compiled_hits(self, hits: Tuple[bytes, ...]) -> Found:
        """The compiled engine's bytes (indices, words[, header indices, next words]) as arrays."""
        indices, found = hits[:2]
        header_indices, header_next = hits[2:] if len(hits) == 4 else (b"", b"")
        return Found(np.frombuffer(indices, dtype=np.int64), np.frombuffer(found, dtype=np.uint64).astype(self.dtype),
                     np.frombuffer(header_indices, dtype=np.int64),
                     np.frombuffer(header_next, dtype=np.uint64).astype(self.dtype))

    def _find_values(self, words: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """numpy engine: the indices and words of the members of the set."""
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

    def _find_headers(self, words: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """numpy engine: the object headers at even word indices (with a word after them) and those words."""
        if self.headers is None or len(words) < 2:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=self.dtype)
        even = words[0:len(words) - 1:2]  # even indices that have a next word
        candidates = np.flatnonzero((even & self.dtype.type(0xFFFF)) == self.headers.type)
        sizes = ((even[candidates] >> self.dtype.type(16)) & self.dtype.type(0xFFFF)).astype(np.int64)
        table = np.frombuffer(self._header_bitmap, dtype=np.uint8)
        matched = candidates[(table[sizes >> 3] >> (sizes & 7)) & 1 == 1]
        indices = matched.astype(np.int64) * 2
        return indices, words[indices + 1]

    def _find_block(self, words: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        if self.table is None:
            hit = words == self.values[0]
            for value in self.values[1:]:
                hit |= words == value
            indices = np.flatnonzero(hit)
        else:
            candidates = self._candidates(words)
            values = words[candidates]
            position = np.searchsorted(self.values, values)
            position[position == len(self.values)] = 0
            indices = candidates[self.values[position] == values]
        return indices, words[indices]

    def _candidates(self, words: np.ndarray) -> np.ndarray:
        """Indices of the words that pass the table filter (a superset of the hits)."""
        if self._high_halves is None:
            return np.flatnonzero(self.table.take(self._keys(words), mode="clip"))
        halves = words.view("<u4")
        high = halves[1::2]
        same_region = high == self._high_halves[0]
        for high_half in self._high_halves[1:]:
            same_region |= high == high_half
        candidates = np.flatnonzero(same_region)
        keys = halves[0::2][candidates]  # then as _keys() computes them
        keys >>= np.uint32(self._shift)
        keys ^= self._high_halves[0] if len(self._high_halves) == 1 else high[candidates]
        keys &= np.uint32(self._key_mask)
        return candidates[self.table.take(keys, mode="clip")]

