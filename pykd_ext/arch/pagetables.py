"""The walks of four-level page tables (``paging.PagingFormat``) over a source of physical pages.

``PageTables`` is one address space's tables in a source of physical pages (a dump file's): the forward
walk (a virtual page to its physical address) and the reverse walk of the kernel half (a physical frame
to the kernel virtual addresses that map it), which turns the physical hits of the memory search into
kernel addresses. Every table is read at most once per walk, every walk is bounded, and what the tables
lack (a table a present entry points to that the memory does not hold) or get wrong (a table reached
twice: a loop) is counted for the report rather than raised.
"""
from __future__ import annotations

import struct
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

import numpy as np

from .paging import ENTRIES_PER_TABLE, LEVEL_SHIFTS, TABLE_BYTES, EntryTest, PagingFormat

# Virtual page -> physical page translations remembered for reads.
TRANSLATION_CACHE_ENTRIES = 1 << 18
# The reverse walk reads this many leaf tables at a time.
TABLE_BATCH = 1024
# A table hierarchy referencing more tables than this is corrupt (4 GiB of page tables).
MAX_PAGE_TABLES = 1 << 20

# A source of physical memory: the 4 KiB of a page frame, or None when it does not hold that frame.
PageReader = Callable[[int], Optional[bytes]]


def _passes(entry: int, test: Optional[EntryTest]) -> bool:
    return test is not None and entry & test[0] == test[1]


def _passing(entries: np.ndarray, tests: Iterable[Optional[EntryTest]]) -> np.ndarray:
    """Vectorised: which of ``entries`` pass any of ``tests``."""
    found = np.zeros(len(entries), dtype=bool)
    for test in tests:
        if test is not None:
            found |= (entries & np.uint64(test[0])) == np.uint64(test[1])
    return found


class PageTables:
    """One address space's four-level tables (root at physical ``root``) in a source of physical pages.

    ``page`` reads a frame through the source's cache (the tables a forward walk meets again and
    again); ``page_uncached`` reads one without filling the cache (the reverse walk's leaf tables,
    read once each). ``missing_tables`` are the kernel-half tables that present entries point to but
    the memory lacks; ``repeated_tables`` those the reverse walk reached more than once (a loop, or
    tables shared between mappings, which Windows does not do): each was walked once.
    """

    def __init__(self, paging: PagingFormat, root: int, page: PageReader, page_uncached: PageReader):
        self.paging = paging
        self.root_pfn = (root & paging.address_mask) >> 12
        self._page = page
        self._page_uncached = page_uncached
        self.missing_tables: Set[int] = set()
        self.repeated_tables: Set[int] = set()
        self._translations: Dict[int, Optional[int]] = {}
        self._kernel_mappings: Optional[_KernelMappings] = None
        self._virtual_of_pfn: Dict[int, Optional[int]] = {}
        # The forward walk's tests per upper level, unpacked once: (shift, block mask and value (a mask of
        # 0 and a value of 1 where no block exists: never equal), table mask and value).
        self._upper_levels = [(shift, *(paging.block[level] or (0, 1)), *paging.table[level])
                              for level, shift in enumerate(LEVEL_SHIFTS[:3])]

    # ---- virtual -> physical ---------------------------------------------------------------------

    def translate(self, page: int) -> Optional[int]:
        """Physical address of virtual page ``page``, or None (remembered)."""
        if page in self._translations:
            return self._translations[page]
        physical = self.walk(page)
        if len(self._translations) >= TRANSLATION_CACHE_ENTRIES:
            self._translations.clear()
        self._translations[page] = physical
        return physical

    def walk(self, address: int) -> Optional[int]:
        """Physical address of virtual ``address`` through the tables, or None when nothing maps it."""
        paging = self.paging
        if not paging.is_canonical(address):
            return None
        mask = paging.address_mask
        table = self.root_pfn
        for shift, block_mask, block_value, table_mask, table_value in self._upper_levels:
            entry = self._entry(table, address, shift)
            if entry is None:
                return None
            if entry & block_mask == block_value:  # a 1 GiB or 2 MiB block
                span = 1 << shift
                return (entry & mask & ~(span - 1)) + (address & (span - 1))
            if entry & table_mask != table_value:
                return None
            table = (entry & mask) >> 12
        entry = self._entry(table, address, LEVEL_SHIFTS[3])
        if entry is not None and any(entry & test_mask == value for test_mask, value in paging.page):
            return (entry & mask) + (address & (TABLE_BYTES - 1))
        return None

    def mapped_pages(self, start: int, end: int) -> List[Tuple[int, int]]:
        """(virtual page, physical address) of every page of ``[start, end)`` (page aligned) that the
        tables map, as ``walk`` would find them, in address order. An entry that maps
        nothing skips its whole span (512 GiB, 1 GiB or 2 MiB) at once, so a large range that is mostly
        unmapped costs a few table reads rather than a walk per page."""
        found: List[Tuple[int, int]] = []
        half = 1 << (self.paging.virtual_address_bits - 1)
        for low, high in ((start, min(end, half)), (max(start, self.paging.canonical(half)), end)):
            if low < high:  # the part in one canonical half (nothing between them is an address)
                self._mapped_in(self.root_pfn, 0, low, high, found)
        return found

    def _mapped_in(self, table: int, level: int, start: int, end: int, found: List[Tuple[int, int]]) -> None:
        content = self._table(table, start)
        if content is None:
            return
        shift = LEVEL_SHIFTS[level]
        span = 1 << shift
        mask = self.paging.address_mask
        address = start
        while address < end:
            entry = struct.unpack_from("<Q", content, ((address >> shift) & 0x1FF) * 8)[0]
            following = min(end, (address | (span - 1)) + 1)
            if level == 3:
                if any(entry & test_mask == value for test_mask, value in self.paging.page):
                    found.append((address, entry & mask))
            else:
                _, block_mask, block_value, table_mask, table_value = self._upper_levels[level]
                if entry & block_mask == block_value:
                    base = entry & mask & ~(span - 1)
                    found.extend((page, base + (page & (span - 1))) for page in range(address, following, TABLE_BYTES))
                elif entry & table_mask == table_value:
                    self._mapped_in((entry & mask) >> 12, level + 1, address, following, found)
            address = following

    def _entry(self, table: int, address: int, shift: int) -> Optional[int]:
        """The entry of ``table`` (a frame) that ``address`` selects at the level of ``shift``, or None when
        the memory lacks the table."""
        content = self._table(table, address)
        if content is None:
            return None
        return struct.unpack_from("<Q", content, ((address >> shift) & 0x1FF) * 8)[0]

    def _table(self, table: int, address: int) -> Optional[bytes]:
        """The page table ``table`` (a frame) that a walk of ``address`` reads, or None when the memory
        lacks it (counted when it is a kernel table: a kernel or complete dump holds every one)."""
        content = self._page(table)
        if content is None and address >> (self.paging.virtual_address_bits - 1) & 1:
            self.missing_tables.add(table)
        return content

    def kernel_half_problem(self) -> str:
        """Why no kernel address can be translated (the top-level table missing, or mapping nothing of
        the kernel half), or "" when the kernel half has at least one table."""
        content = self._page(self.root_pfn)
        if content is None:
            return f"its top-level page table (page frame {self.root_pfn:#x}) is not in the dump"
        entries = np.frombuffer(content, dtype="<u8")[self.paging.kernel_first_index:]
        if not _passing(entries, [self.paging.table[0], self.paging.block[0]]).any():
            return f"its top-level page table (page frame {self.root_pfn:#x}) maps no kernel address"
        return ""

    # ---- physical -> kernel virtual ------------------------------------------------------------

    def kernel_addresses(self, pfns: Iterable[int]) -> Dict[int, Optional[int]]:
        """Kernel virtual address of each page frame (the lowest when several map it), or None."""
        wanted = sorted(set(pfns) - set(self._virtual_of_pfn))
        if wanted:
            if self._kernel_mappings is None:
                self._kernel_mappings = _KernelMappings(self)
            resolved = self._kernel_mappings.virtual_addresses(np.array(wanted, dtype=np.uint64))
            for pfn in wanted:
                self._virtual_of_pfn[pfn] = resolved.get(pfn)
        return self._virtual_of_pfn


class _KernelMappings:
    """The kernel half of the tables, walked from the top level down, for physical -> virtual.

    The upper levels are walked once and remembered as the list of leaf (level-3) tables plus the
    blocks (1 GiB, 2 MiB); each lookup then reads the leaf tables in batches and keeps only the frames
    asked for, so memory stays bounded by the answer. The top-level entry that points back at the top
    table itself (the self-map, through which the kernel sees its own tables) is skipped. Every table
    is walked at most once, so damaged tables cannot loop.
    """

    def __init__(self, tables: PageTables):
        self.tables = tables
        self.paging = tables.paging
        self.leaf_tables: List[Tuple[int, int]] = []  # (page table frame, virtual address it starts at)
        self.blocks: List[Tuple[int, int, int]] = []  # (first frame, frames, virtual address)
        root = tables.root_pfn
        seen = {root}
        for index, entry in self._entries(root, self.paging.kernel_first_index, [self.paging.table[0]]):
            table = (entry & self.paging.address_mask) >> 12
            if table == root:
                continue  # the self-map entry
            self._directory(table, self.paging.canonical(index << LEVEL_SHIFTS[0]), 1, seen)

    def _entries(self, pfn: int, first_index: int, tests) -> List[Tuple[int, int]]:
        """(index, entry) of the entries of table ``pfn`` from ``first_index`` that pass ``tests``."""
        content = self.tables._page(pfn)
        if content is None:
            self.tables.missing_tables.add(pfn)
            return []
        entries = np.frombuffer(content, dtype="<u8")[first_index:]
        indices = np.flatnonzero(_passing(entries, tests))
        return list(zip((indices + first_index).tolist(), entries[indices].tolist()))

    def _directory(self, pfn: int, base: int, level: int, seen: set) -> None:
        """Walk a level-1 or level-2 table starting at virtual address ``base``."""
        if pfn in seen:
            self.tables.repeated_tables.add(pfn)
            return
        if len(seen) >= MAX_PAGE_TABLES:
            return
        seen.add(pfn)
        shift = LEVEL_SHIFTS[level]
        block, table = self.paging.block[level], self.paging.table[level]
        for index, entry in self._entries(pfn, 0, [block, table]):
            address = base + (index << shift)
            frame = (entry & self.paging.address_mask) >> 12
            if _passes(entry, block):
                frames = 1 << (shift - 12)
                self.blocks.append((frame & ~(frames - 1), frames, address))
            elif level == 1:
                self._directory(frame, address, 2, seen)
            elif frame in seen:
                self.tables.repeated_tables.add(frame)
            elif len(seen) < MAX_PAGE_TABLES:
                seen.add(frame)
                self.leaf_tables.append((frame, address))

    def virtual_addresses(self, wanted: np.ndarray) -> Dict[int, int]:
        """{frame: lowest kernel virtual address mapping it} for the sorted frames ``wanted``."""
        found: Dict[int, int] = {}

        def keep(frames: np.ndarray, addresses: np.ndarray) -> None:
            for frame, address in zip(frames.tolist(), addresses.tolist()):
                if frame not in found or address < found[frame]:
                    found[frame] = address

        if self.blocks:  # where each block's frames start and end among the wanted, all at once
            firsts = np.array([first for first, _, _ in self.blocks], dtype=np.uint64)
            ends = firsts + np.array([frames for _, frames, _ in self.blocks], dtype=np.uint64)
            starts, stops = np.searchsorted(wanted, firsts), np.searchsorted(wanted, ends)
            for position in np.flatnonzero(stops > starts).tolist():
                first, _, address = self.blocks[position]
                inside = wanted[starts[position]:stops[position]]
                keep(inside, np.uint64(address) + (inside - np.uint64(first)) * np.uint64(TABLE_BYTES))
        mask = np.uint64(self.paging.address_mask)
        for batch_start in range(0, len(self.leaf_tables), TABLE_BATCH):
            batch = self.leaf_tables[batch_start:batch_start + TABLE_BATCH]
            contents = []
            bases = []
            for frame, address in batch:
                content = self.tables._page_uncached(frame)
                if content is None:
                    self.tables.missing_tables.add(frame)
                    continue
                contents.append(content)
                bases.append(address)
            if not contents:
                continue
            entries = np.frombuffer(b"".join(contents), dtype="<u8")
            frames_mapped = (entries & mask) >> np.uint64(12)
            hit = _passing(entries, self.paging.page) & np.isin(frames_mapped, wanted)
            positions = np.flatnonzero(hit)
            if len(positions):
                table_base = np.array(bases, dtype=np.uint64)[positions // ENTRIES_PER_TABLE]
                keep(frames_mapped[positions],
                     table_base + (positions % ENTRIES_PER_TABLE).astype(np.uint64) * np.uint64(TABLE_BYTES))
        return found
