"""Pool blocks: the allocation that holds an address, found the way !pool finds it, and its tag.

Where a block is can be learnt in three ways, tried in this order:

* the big pool table: an allocation of a page or more has no header, only an entry in
  ``nt!PoolBigPageTable`` (``nt!PoolBigPageTableSize`` entries of ``_POOL_TRACKER_BIG_PAGES``: Va,
  Key = the tag, NumberOfBytes; an entry whose Va has bit 0 set is free). Used when the kernel's
  symbols give both globals and the type (its size changed between builds); read once, bounded.
* a ``_POOL_HEADER`` in front of the address, in the same page (small blocks never cross a page): the
  nearest one whose BlockSize covers the address without running past the page, whose tag is four
  printable characters and whose PreviousSize, when not 0, is the BlockSize of the header that many
  units before it. BlockSize and PreviousSize count units of sizeof(POOL_HEADER); a block whose
  PoolType is 0 is free. On the segment heap (build 18362 and later) a block of the LFH allocator
  starts with its POOL_HEADER, and one of the VS allocator has a 16-byte chunk header before it: the
  next block's POOL_HEADER then starts a chunk header after the block's end instead of right at it,
  which is how the two are told apart (when the next block shows it).
* otherwise the address is in no block leakhunt can place.
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..layouts import (POOL_HEADER_BITS, SEGMENT_HEAP_FIRST_BUILD, VS_CHUNK_HEADER_SIZE, LayoutError, Layouts,
                       StructLayout)
from ..targets.base import PAGE_SIZE, MemoryReadError, Target

FOUND_BY_HEADER = "pool header"
FOUND_BY_VS_HEADER = "VS chunk header and pool header"
FOUND_BY_BIG_POOL_TABLE = "big pool table"

# Headers tried per address after the nearest plausible one fails its PreviousSize check (bounded work
# against pages full of header-like data).
MAX_HEADER_CANDIDATES = 8
# Entries of the big pool table read at most (real tables hold a few thousand to a few hundred thousand).
MAX_BIG_POOL_ENTRIES = 1 << 20
BIG_POOL_READ_ENTRIES = 4096
# A free entry of the big pool table has bit 0 of its Va set (WRK pool.c, POOL_BIG_TABLE_ENTRY_FREE).
BIG_POOL_ENTRY_FREE = 0x1
# Pages whose headers were decoded, and the blocks found, kept for the next address asked about.
DECODED_PAGES_KEPT = 1024
BLOCKS_KEPT = 4096


def tag_text(raw: bytes) -> Optional[str]:
    """A pool tag as !pool prints it (its four bytes in memory order), or None when they are not four
    printable ASCII characters with a letter or digit among them. The top bit of the last byte
    (PROTECTED_POOL on older kernels) is ignored."""
    if len(raw) != 4:
        return None
    chars = raw[:3] + bytes([raw[3] & 0x7F])
    if not all(0x20 <= c < 0x7F for c in chars) or not any(chr(c).isalnum() for c in chars):
        return None
    return chars.decode("ascii")


@dataclass(frozen=True)
class PoolBlock:
    address: int  # the allocation, as the allocator returned it: the first byte after its header(s)
    size: int  # bytes from ``address`` to the end of the block
    tag: str
    allocated: bool
    finder: str  # FOUND_BY_HEADER, FOUND_BY_VS_HEADER or FOUND_BY_BIG_POOL_TABLE
    header: Optional[int] = None  # the POOL_HEADER's address (none for a big allocation)

    def contains(self, address: int) -> bool:
        return self.address <= address < self.address + self.size


@dataclass
class _BigPoolTable:
    starts: List[int] = field(default_factory=list)  # sorted Va of the allocated entries
    entries: List[Tuple[int, int, str]] = field(default_factory=list)  # (Va, NumberOfBytes, tag), same order


class PoolFinder:
    """Finds the pool block holding an address (see the module docstring); one per analysis.

    ``symbol`` looks up a kernel symbol (the session's), for the big pool table; ``warn`` is told what the
    finder could not use, one sentence each (the report's warnings).
    """

    def __init__(self, target: Target, layouts: Layouts, symbol: Optional[Callable[[str], Optional[int]]] = None,
                 warn: Optional[Callable[[str], None]] = None):
        self.target = target
        self.layouts = layouts
        self.symbol = symbol
        self.warn = warn or (lambda text: None)
        self._big: Optional[_BigPoolTable] = None
        self._pages: Dict[int, Optional[_DecodedPage]] = {}
        self._blocks: Dict[int, Optional[PoolBlock]] = {}
        self._header: Optional[StructLayout] = None  # the POOL_HEADER layout, looked up at the first block
        self._bits = POOL_HEADER_BITS.get(target.pointer_size)
        build = target.build
        self._vs_header = VS_CHUNK_HEADER_SIZE.get(target.pointer_size, 0) \
            if build is None or build >= SEGMENT_HEAP_FIRST_BUILD else 0

    @property
    def headers_known(self) -> bool:
        """Whether the architecture's POOL_HEADER is known (else only the big pool table can place a block)."""
        if self._header is None:
            header = self.layouts.find("_POOL_HEADER")
            if header is None or not header.has("Ulong1") or not header.has("PoolTag"):
                return False
            self._header = header
        return self._bits is not None

    def decode_pages_of(self, addresses: Iterable[int]) -> None:
        """Read the pages of ``addresses`` and decode their headers at once, before their blocks are asked
        for: a thousand copies to place cost one pass of numpy over their pages, not one per page. The
        pages of addresses that the big pool table places, when it has been read, are left alone: their
        headers are not read."""
        if not self.headers_known:
            return
        placed = self._big_block if self._big is not None else (lambda address: None)
        pages = sorted({address & ~(PAGE_SIZE - 1) for address in addresses if placed(address) is None}
                       - set(self._pages))
        pages = pages[:DECODED_PAGES_KEPT]
        if len(self._pages) + len(pages) > DECODED_PAGES_KEPT:
            self._pages.clear()
        readable: Dict[int, bytes] = {}
        for page in pages:
            try:
                data = self.target.read(page, PAGE_SIZE)
            except MemoryReadError:
                self._pages[page] = None
                continue
            if len(data) == PAGE_SIZE:
                readable[page] = data
        decoded = _DecodedPage.decode(list(readable.values()), self._header, self._bits["BlockSize"])
        self._pages.update(zip(readable, decoded))

    def block_of(self, address: int) -> Optional[PoolBlock]:
        """The pool block holding ``address``, or None when no table or header places it."""
        if address not in self._blocks:
            if len(self._blocks) >= BLOCKS_KEPT:
                self._blocks.clear()
            self._blocks[address] = self._big_block(address) or self._small_block(address)
        return self._blocks[address]

    # ---- the big pool table --------------------------------------------------------------------

    def _big_block(self, address: int) -> Optional[PoolBlock]:
        table = self._big_table()
        position = bisect.bisect_right(table.starts, address) - 1
        if position < 0:
            return None
        va, size, tag = table.entries[position]
        if not va <= address < va + size:
            return None
        return PoolBlock(va, size, tag, True, FOUND_BY_BIG_POOL_TABLE)

    def _big_table(self) -> _BigPoolTable:
        if self._big is None:
            self._big = _BigPoolTable()
            self._read_big_table(self._big)
        return self._big

    def _read_big_table(self, table: _BigPoolTable) -> None:
        if self.symbol is None:
            return
        array, count_variable = self.symbol("nt!PoolBigPageTable"), self.symbol("nt!PoolBigPageTableSize")
        layout = self.layouts.find("_POOL_TRACKER_BIG_PAGES")
        if array is None or count_variable is None or layout is None or not layout.size:
            return
        try:
            first = self.target.read_pointer(array)
            count = self.target.read_pointer(count_variable)
            view_fields = [layout.offset(name) for name in ("Va", "Key", "NumberOfBytes")]
        except (MemoryReadError, LayoutError) as error:
            self.warn(f"the big pool table (nt!PoolBigPageTable) is unreadable ({error}): blocks of a "
                                 f"page or more are placed by their headers only")
            return
        if count > MAX_BIG_POOL_ENTRIES:
            self.warn(f"nt!PoolBigPageTableSize says {count} entries; only the first "
                                 f"{MAX_BIG_POOL_ENTRIES} were read")
            count = MAX_BIG_POOL_ENTRIES
        found: List[Tuple[int, int, str]] = []
        unreadable = 0
        va_at, key_at, bytes_at = view_fields
        pointer = "<Q" if self.target.pointer_size == 8 else "<I"
        for start in range(0, count, BIG_POOL_READ_ENTRIES):
            entries = min(BIG_POOL_READ_ENTRIES, count - start)
            try:
                data = self.target.read(first + start * layout.size, entries * layout.size)
            except MemoryReadError:
                unreadable += entries
                continue
            for index in range(entries):
                base = index * layout.size
                va = struct.unpack_from(pointer, data, base + va_at)[0]
                size = struct.unpack_from(pointer, data, base + bytes_at)[0]
                tag = tag_text(data[base + key_at:base + key_at + 4])
                if va & BIG_POOL_ENTRY_FREE or not va or not size or tag is None:
                    continue
                found.append((va, size, tag))
        if unreadable:
            self.warn(f"{unreadable} of the {count} entries of the big pool table are not in memory: "
                                 f"the blocks they describe are placed by their headers only")
        found.sort()
        table.starts = [va for va, _, _ in found]
        table.entries = found

    # ---- headers in front of the address ------------------------------------------------------

    def _small_block(self, address: int) -> Optional[PoolBlock]:
        if not self.headers_known:
            return None
        unit = self._header.size
        page = address & ~(PAGE_SIZE - 1)
        decoded = self._decoded_page(page)
        if decoded is None:
            return None
        offset = address - page
        last_row = offset // unit - 1  # the header ends at or before the address
        if last_row < 0:
            return None
        covering = np.flatnonzero(decoded.plausible[:last_row + 1] & (decoded.ends[:last_row + 1] > offset))
        for row in covering[::-1][:MAX_HEADER_CANDIDATES].tolist():
            previous, block_size, pool_type, tag = self._fields(decoded, row)
            if previous and (row - previous < 0 or decoded.block_sizes[row - previous] != previous):
                continue  # PreviousSize does not lead to a header of that size: not a real header
            header = page + row * unit
            finder = self._allocator(decoded, row + block_size)
            return PoolBlock(header + unit, (block_size - 1) * unit, tag, pool_type != 0, finder, header)
        return None

    def _allocator(self, decoded: "_DecodedPage", next_row: int) -> str:
        """FOUND_BY_VS_HEADER when the next block's header is a VS chunk header after this block's end
        (and not right at it), else FOUND_BY_HEADER."""
        unit = self._header.size
        if not self._vs_header or next_row * unit >= PAGE_SIZE:
            return FOUND_BY_HEADER
        vs_row = next_row + self._vs_header // unit

        def plausible(row: int) -> bool:
            return row < len(decoded.plausible) and bool(decoded.plausible[row])

        return FOUND_BY_VS_HEADER if plausible(vs_row) and not plausible(next_row) else FOUND_BY_HEADER

    def _decoded_page(self, page: int) -> Optional["_DecodedPage"]:
        """The page's header-sized rows decoded as headers, or None when it is unreadable."""
        if page not in self._pages:
            try:
                data: Optional[bytes] = self.target.read(page, PAGE_SIZE)
            except MemoryReadError:
                data = None
            if len(self._pages) >= DECODED_PAGES_KEPT:
                self._pages.clear()
            self._pages[page] = None if data is None else \
                _DecodedPage.decode([data], self._header, self._bits["BlockSize"])[0]
        return self._pages[page]

    def _fields(self, decoded: "_DecodedPage", row: int) -> Tuple[int, int, int, str]:
        """(PreviousSize, BlockSize, PoolType, tag) of the header at ``row`` of the page (a plausible one)."""
        base = row * self._header.size
        ulong1 = struct.unpack_from("<I", decoded.data, base + self._header.offset("Ulong1"))[0]
        tag_at = base + self._header.offset("PoolTag")
        values = {name: (ulong1 >> first) & ((1 << bits) - 1) for name, (first, bits) in self._bits.items()}
        return (values["PreviousSize"], values["BlockSize"], values["PoolType"],
                tag_text(decoded.data[tag_at:tag_at + 4]) or "")


class _DecodedPage:
    """One page's header-sized rows read as POOL_HEADERs: each row's BlockSize, where its block would end,
    and whether it is a plausible header (a BlockSize, a printable tag, a block that stays in the page)."""

    def __init__(self, data: bytes, block_sizes: np.ndarray, ends: np.ndarray, plausible: np.ndarray):
        self.data = data
        self.block_sizes = block_sizes
        self.ends = ends
        self.plausible = plausible

    @classmethod
    def decode(cls, pages: List[bytes], header: StructLayout, block_size_bits: Tuple[int, int]) -> List["_DecodedPage"]:
        """The pages (PAGE_SIZE bytes each) decoded, all in one pass."""
        if not pages:
            return []
        unit = header.size
        rows = np.frombuffer(b"".join(pages), dtype=np.uint8).reshape(len(pages), -1, unit)
        ulong1 = rows[:, :, header.offset("Ulong1"):][:, :, :4].copy().view("<u4")[:, :, 0]
        first, bits = block_size_bits
        block_sizes = ((ulong1 >> np.uint32(first)) & np.uint32((1 << bits) - 1)).astype(np.int64)
        ends = (np.arange(rows.shape[1]) + block_sizes) * unit
        tag_bytes = rows[:, :, header.offset("PoolTag"):][:, :, :4].copy()
        tag_bytes[:, :, 3] &= 0x7F
        alphanumeric = ((tag_bytes >= 0x30) & (tag_bytes <= 0x39)) | ((tag_bytes >= 0x41) & (tag_bytes <= 0x5A)) \
            | ((tag_bytes >= 0x61) & (tag_bytes <= 0x7A))
        tags = np.all((tag_bytes >= 0x20) & (tag_bytes < 0x7F), axis=2) & np.any(alphanumeric, axis=2)
        plausible = tags & (block_sizes > 0) & (ends <= PAGE_SIZE)
        return [cls(data, block_sizes[index], ends[index], plausible[index]) for index, data in enumerate(pages)]


def tag_before(target: Target, layouts: Layouts, address: int) -> Optional[str]:
    """The tag of the POOL_HEADER just before ``address`` (the start of a block, like a lock tracker's
    address), read the way !pool shows it; None when the header is unknown or unreadable, its tag is not
    one, or its BlockSize leaves no room for a block."""
    layout = layouts.find("_POOL_HEADER")
    bits = POOL_HEADER_BITS.get(target.pointer_size)
    if layout is None or not layout.size or bits is None:
        return None
    try:
        view = layouts.view("_POOL_HEADER", address - layout.size)
        first, width = bits["BlockSize"]
        block_size = (view["Ulong1"] >> first) & ((1 << width) - 1)
        tag = tag_text(struct.pack("<I", view["PoolTag"]))
    except (MemoryReadError, LayoutError):
        return None
    return tag if block_size > 1 else None
