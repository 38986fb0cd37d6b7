"""A kernel crash dump file as a Target: ``leakhunt analyze MEMORY.DMP`` on any OS, without a debugger.

Reads go through the kernel's own x64 page tables (PML4 at the header's DirectoryTableBase) to the
physical pages stored in the file. The pointer search goes through the stored pages a bounded window at
a time on each core, searching each with ``ValueSet`` (all values of one hunt level in one pass) where
the page cache holds it (a read-only mapping of the file) or after reading it, then turns the physical
hits into kernel virtual addresses with one walk of the kernel page tables for just the page frames
that hold hits. leakhunt's own memory stays bounded whatever the size of the dump.

A small (triage) dump is opened as a ``SmallDumpTarget`` (smalldump.py), whose memory is what its triage
section copied. 32-bit and ARM64 kernel dumps still give the bug check, build and architecture from the
header; their reads raise MemoryReadError and the search raises SearchUnavailable saying what dump the
hunt needs.
"""
from __future__ import annotations

import mmap
import os
import struct
import threading
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Deque, Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..search import Found, ValueSet
from ..sources import unopenable_reason
from .base import (PAGE_SIZE, BugCheck, HeaderHit, MemoryReadError, Module, ObjectHeaders, PfnRange, ProgressCallback,
                   SearchHit, SearchUnavailable, SymbolNotFound, Target, TargetError, read_from_pages)
from .dumpheader import (DUMP_TRIAGE, MACHINE_X64, MEMORY_DUMP_TYPES, DumpFileError, DumpHeader, PhysicalLayout,
                         format_size, read_dump_header, read_physical_layout)

# Bytes of the file each search thread searches at a time (the unit of progress and of interrupts)
# when the compiled engine searches the file's mapping or reads the file itself (through its own
# 256 KiB buffer), and the most read into a buffer first for the numpy engine (its temporaries leave
# the cache beyond that). leakhunt's own memory does not grow with the dump.
WINDOW_BYTES = 32 << 20
BUFFERED_WINDOW_BYTES = 8 << 20
# Windows searched at once (one per core, up to 4: beyond that a streaming read is the limit).
SEARCH_THREADS = min(4, os.cpu_count() or 1)
# Whether the compiled engine searches a read-only mapping of the file (where its bus-error guard
# exists: search.compiled_searches_mappings) rather than reading it. The words are then searched where
# the page cache holds them, not copied out first, and the file is mapped once for every pass of the
# hunt, so that the second pass costs no page faults (benchmarks/bench_dump_search.py compares the
# two). The mapped pages count in the process's resident set while it is mapped; they are the page
# cache's, shared with every reader of the file, not leakhunt's own memory.
MAPPED_SEARCH = True
# Physical pages kept in memory for reads (page tables and kernel objects): 16 MiB.
PAGE_CACHE_PAGES = 4096
# Virtual page -> physical page translations remembered for reads.
TRANSLATION_CACHE_ENTRIES = 1 << 18
# The reverse page-table walk reads this many page tables at a time.
TABLE_BATCH = 1024
# A page table hierarchy referencing more tables than this is corrupt (4 GiB of page tables).
MAX_PAGE_TABLES = 1 << 20

# x64 paging (Intel SDM vol. 3 §4.5): entry bits and the physical address bits 12..51.
PTE_PRESENT = 0x1
PTE_LARGE_PAGE = 0x80  # PS: the PDPTE maps 1 GiB, the PDE maps 2 MiB
PTE_ADDRESS_MASK = 0x000FFFFFFFFFF000
KERNEL_HALF_FIRST_PML4 = 256  # PML4 entries 256..511 map 0xFFFF8000`00000000 and above
LEVEL_SHIFTS = (39, 30, 21, 12)

CONFIGURE_KERNEL_DUMP = (
    "in Windows set System Properties > Advanced > Startup and Recovery > Write debugging information to "
    "\"Kernel memory dump\" or \"Complete memory dump\" (CrashDumpEnabled = 2 or 1 under "
    "HKLM\\SYSTEM\\CurrentControlSet\\Control\\CrashControl)")


def hunt_unavailable_reason(header: DumpHeader, name: str) -> str:
    """One sentence saying why leakhunt cannot read this kernel dump's memory, or "" when it can (a small
    dump says what it holds itself: smalldump.py)."""
    if header.dump_type not in MEMORY_DUMP_TYPES:
        return (f"{name} is a {header.type_name} (DumpType {header.dump_type:#x}) whose memory leakhunt cannot "
                f"read; the hunt needs a kernel or complete memory dump: {CONFIGURE_KERNEL_DUMP}.")
    if header.pointer_size == 4 or header.machine != MACHINE_X64:
        kind = "a 32-bit x86" if header.pointer_size == 4 else f"an {header.arch.upper()}"
        return (f"{name} is {kind} dump and leakhunt reads memory offline only from x64 dumps: open it in "
                f"WinDbg and run !py leakhunt there to hunt.")
    return ""


def file_shrank(detail: str) -> TargetError:
    """The error for a dump file cut short by another program after leakhunt opened and checked it."""
    return TargetError(f"the dump file is shorter than when leakhunt opened it (was it truncated while leakhunt "
                       f"read it?): {detail}")


def search_read_failed(start: int, end: int, error: OSError) -> TargetError:
    """The error for bytes of the dump that the search could not read although the file still has them."""
    return TargetError(f"reading bytes {start:#x}-{end:#x} of the dump file failed ({error.strerror or error}: a "
                       f"failing disk, or a network share that went away?); copy the dump to a local disk and "
                       f"run leakhunt again")


def canonical(address: int) -> int:
    """Sign-extend a 48-bit x64 virtual address."""
    return address | 0xFFFF000000000000 if address & (1 << 47) else address


class DumpFileTarget(Target):
    """A Windows kernel crash dump file, opened read-only."""

    def __init__(self, path: str, handle, header: DumpHeader, layout: Optional[PhysicalLayout],
                 hunt_unavailable: str):
        self.path = path
        self.header = header
        self.layout = layout
        # One sentence when the dump's memory cannot be read (small, 32-bit or ARM64 dump), else "".
        self.hunt_unavailable = hunt_unavailable
        self._unreadable = f"leakhunt reads no memory from this {header.type_name} ({header.arch})"
        self.arch = header.arch
        self.pointer_size = header.pointer_size
        self.build = header.build
        self.max_pfn = header.highest_machine_pfn
        if self.max_pfn is None and layout is not None:
            self.max_pfn = layout.highest_pfn
        self.description = (f"{os.path.basename(path)}: {header.type_name}, {format_size(header.file_size)}, "
                            f"{header.arch}, build {header.build}, {header.processors} processor(s)")
        self._handle = handle
        # The whole file mapped read-only for the search (MAPPED_SEARCH), made at the first search,
        # unless mapping it failed (the search then reads the file).
        self._mapping: Optional[mmap.mmap] = None
        self._mapping_failed = False
        self._pages: "OrderedDict[int, Optional[bytes]]" = OrderedDict()
        self._translations: Dict[int, Optional[int]] = {}
        # Virtual page -> its 4 KiB, for the pages read so far (the kernel objects' pages): one look-up
        # per read instead of a translation and a physical page look-up.
        self._virtual_pages: Dict[int, bytes] = {}
        self._tables: Optional[_KernelMappings] = None
        self._virtual_of_pfn: Dict[int, Optional[int]] = {}
        # Kernel page tables that present entries point to but the dump lacks (see limitations()).
        self._missing_tables: set = set()

    # ---- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str) -> "DumpFileTarget":
        """Open ``path`` read-only and parse its header; raise DumpFileError with one clear line."""
        reason = unopenable_reason(path)
        if reason:
            raise DumpFileError(f"{path} {reason}")
        try:
            handle = open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise DumpFileError(f"{path}: no such file") from None
        except PermissionError:
            raise DumpFileError(f"{path}: permission denied") from None
        except OSError as error:
            raise DumpFileError(f"cannot open {path}: {error.strerror or error}") from None
        try:
            file_size = os.fstat(handle.fileno()).st_size
            header = read_dump_header(handle, path, file_size)
            if header.dump_type == DUMP_TRIAGE:
                from .smalldump import SmallDumpTarget  # it builds on this class
                return SmallDumpTarget(path, handle, header)
            reason = hunt_unavailable_reason(header, os.path.basename(path))
            layout = None if reason else read_physical_layout(handle, header, path)
        except OSError as error:
            handle.close()
            raise DumpFileError(f"cannot read {path}: {error.strerror or error}") from None
        except BaseException:
            handle.close()
            raise
        return cls(path, handle, header, layout, reason)

    def close(self) -> None:
        if self._mapping is not None:
            self._mapping.close()
        self._handle.close()

    # ---- facts from the header ------------------------------------------------------------------

    def bugcheck(self) -> BugCheck:
        return self.header.bugcheck

    def symbol(self, name: str) -> int:
        """The kernel globals the header records; every other symbol comes from the kernel's symbols."""
        recorded = {"nt!PsLoadedModuleList": self.header.ps_loaded_module_list,
                    "nt!PsActiveProcessHead": self.header.ps_active_process_head,
                    "nt!KdDebuggerDataBlock": self.header.kd_debugger_data_block}
        if recorded.get(name):
            return recorded[name]
        raise SymbolNotFound(name, "a dump file carries no symbols; give the kernel's symbols with --symbol-path "
                                   "or --symbols FILE, or the address with --symbol NAME=ADDRESS")

    def symbol_source(self, name: str) -> str:
        return "dump header"

    def modules(self) -> Optional[List[Module]]:
        """None for a dump whose memory is read (the session walks the header's PsLoadedModuleList);
        no modules where leakhunt reads none of the dump's memory."""
        return None if self.layout is not None else []

    def limitations(self) -> List[str]:
        """Kernel page tables that present entries point to but the dump lacks (met so far)."""
        if not self._missing_tables:
            return []
        return [f"{len(self._missing_tables)} kernel page table(s) that present page-table entries point to are "
                f"not in the dump (it is damaged, or left them out): the memory they map can be neither read nor "
                f"found by the search"]

    # ---- physical memory -------------------------------------------------------------------------

    def _page(self, pfn: int) -> Optional[bytes]:
        """The 4 KiB of page frame ``pfn``, or None when the dump does not hold it (cached)."""
        if pfn in self._pages:
            self._pages.move_to_end(pfn)
            return self._pages[pfn]
        content = self._read_page(pfn)
        self._pages[pfn] = content
        if len(self._pages) > PAGE_CACHE_PAGES:
            self._pages.popitem(last=False)
        return content

    def _read_page(self, pfn: int) -> Optional[bytes]:
        if self.layout is None:
            return None
        offset = self.layout.file_offset_of(pfn)
        if offset is None:
            return None
        self._handle.seek(offset)
        content = self._handle.read(PAGE_SIZE)
        if len(content) < PAGE_SIZE:
            raise file_shrank(f"page frame {pfn:#x} at offset {offset:#x}")
        return content

    def read_physical(self, address: int, size: int) -> bytes:
        if self.layout is None:
            raise MemoryReadError(address, size, physical=True, reason=self._unreadable)
        return read_from_pages(address, size, lambda page: self._page(page >> 12), "not in the dump", physical=True)

    # ---- virtual memory --------------------------------------------------------------------------

    def read(self, address: int, size: int) -> bytes:
        if self.layout is None:
            raise MemoryReadError(address, size, reason=self._unreadable)
        offset = address & (PAGE_SIZE - 1)
        if 0 < size <= PAGE_SIZE - offset:  # the common case: inside one page
            content = self._virtual_page(address - offset)
            if content is not None:
                return content[offset:offset + size]
        return read_from_pages(address, size, self._virtual_page, "not mapped, or its page is not in the dump")

    def _virtual_page(self, page: int) -> Optional[bytes]:
        content = self._virtual_pages.get(page)
        if content is None:
            physical = self._translate(page)
            content = None if physical is None else self._page(physical >> 12)
            if content is not None:
                if len(self._virtual_pages) >= PAGE_CACHE_PAGES:
                    self._virtual_pages.clear()
                self._virtual_pages[page] = content
        return content

    def _translate(self, page: int) -> Optional[int]:
        """Physical address of virtual page ``page`` through the kernel page tables, or None."""
        if page in self._translations:
            return self._translations[page]
        physical = self._walk(page)
        if len(self._translations) >= TRANSLATION_CACHE_ENTRIES:
            self._translations.clear()
        self._translations[page] = physical
        return physical

    def _walk(self, address: int) -> Optional[int]:
        if canonical(address & 0xFFFFFFFFFFFF) != address:
            return None
        table = self.header.directory_table_base & PTE_ADDRESS_MASK
        for level, shift in enumerate(LEVEL_SHIFTS):
            content = self._page(table >> 12)
            if content is None:
                if address >> 47:  # kernel space: a kernel or complete dump holds all its page tables
                    self._missing_tables.add(table >> 12)
                return None
            entry = struct.unpack_from("<Q", content, ((address >> shift) & 0x1FF) * 8)[0]
            if not entry & PTE_PRESENT:
                return None
            if level in (1, 2) and entry & PTE_LARGE_PAGE:  # a 1 GiB or 2 MiB page
                span = 1 << shift
                return (entry & PTE_ADDRESS_MASK & ~(span - 1)) + (address & (span - 1))
            table = entry & PTE_ADDRESS_MASK
        return table

    # ---- search ----------------------------------------------------------------------------------

    def search_pointers(self, values: Iterable[int], pfn_range: Optional[PfnRange] = None,
                        progress: Optional[ProgressCallback] = None) -> Dict[int, List[SearchHit]]:
        """Scan the dump's physical pages for all ``values`` at once, then name each hit's kernel address."""
        return self._search(values, None, pfn_range, progress)[0]

    def search_pointers_and_headers(self, values: Iterable[int], headers: ObjectHeaders,
                                    pfn_range: Optional[PfnRange] = None, progress: Optional[ProgressCallback] = None
                                    ) -> Tuple[Dict[int, List[SearchHit]], List[HeaderHit]]:
        """search_pointers(), collecting the object headers ``headers`` describes in the same pass."""
        return self._search(values, headers, pfn_range, progress)

    @property
    def finds_object_headers(self) -> bool:
        return self.layout is not None

    def _search(self, values: Iterable[int], headers: Optional[ObjectHeaders], pfn_range: Optional[PfnRange],
                progress: Optional[ProgressCallback]) -> Tuple[Dict[int, List[SearchHit]], List[HeaderHit]]:
        if self.layout is None:
            raise SearchUnavailable(self.hunt_unavailable)
        values = [int(v) for v in values]
        value_set = ValueSet(values, self.pointer_size, headers=headers)
        found_values: List[np.ndarray] = []
        found_physical: List[np.ndarray] = []
        header_physical: List[np.ndarray] = []
        header_next: List[np.ndarray] = []
        mapping = self._mapped_file() if MAPPED_SEARCH and value_set.searches_mappings else None
        window_bytes = WINDOW_BYTES if value_set.reads_files else min(WINDOW_BYTES, BUFFERED_WINDOW_BYTES)
        windows = [(window_start, min(end, window_start + window_bytes))
                   for start, end in self.layout.file_ranges(pfn_range)
                   for window_start in range(start, end, window_bytes)]
        total = sum(end - start for start, end in windows)
        done = 0
        word = np.uint64(self.pointer_size)
        with closing(self._scan_windows(value_set, windows, mapping)) as scans:  # stops the threads on any exit
            for (start, end), found in scans:
                if len(found.indices):
                    offsets = np.uint64(start) + found.indices.astype(np.uint64) * word
                    found_physical.append(self.layout.physical_addresses(offsets))
                    found_values.append(found.words)
                if len(found.header_indices):
                    offsets = np.uint64(start) + found.header_indices.astype(np.uint64) * word
                    header_physical.append(self.layout.physical_addresses(offsets))
                    header_next.append(found.header_next)
                done += end - start
                if progress is not None:
                    progress(done, total)
        return self._hits(values, found_values, found_physical), self._header_hits(header_physical, header_next)

    def _mapped_file(self) -> Optional[mmap.mmap]:
        """The whole file mapped read-only (once per target), or None where it cannot be mapped."""
        if self._mapping is None and not self._mapping_failed:
            try:
                self._mapping = mmap.mmap(self._handle.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError, OverflowError):  # no mappings on this file system, no address space
                self._mapping_failed = True
        return self._mapping

    def _scan_windows(self, value_set: ValueSet, windows: List[Tuple[int, int]], mapping: Optional[mmap.mmap]):
        """Yield (window, search result) in file order, searching up to SEARCH_THREADS windows at once.

        Each thread searches the windows it is given in the file's mapping or, without one, reads them
        through its own read-only handle (see _scan_window). The compiled engine releases the GIL, so
        the windows really are searched in parallel. At most two windows per thread are queued; on an
        interrupt the queued ones are cancelled and the running ones (a few milliseconds each) finish
        before it propagates.
        """
        readers: List[_WindowReader] = []
        per_thread = threading.local()

        def scan(window: Tuple[int, int]) -> Found:
            if mapping is not None:
                return self._scan_mapped_window(mapping, value_set, *window)
            reader = getattr(per_thread, "reader", None)
            if reader is None:
                reader = per_thread.reader = _WindowReader(self.path)
                readers.append(reader)
            return self._scan_window(reader, value_set, *window)

        try:
            if SEARCH_THREADS <= 1 or len(windows) <= 1:
                for window in windows:
                    yield window, scan(window)
                return
            pool = ThreadPoolExecutor(max_workers=SEARCH_THREADS, thread_name_prefix="leakhunt-search")
            try:
                queued: Deque = deque()
                for window in windows:
                    queued.append((window, pool.submit(scan, window)))
                    if len(queued) >= 2 * SEARCH_THREADS:
                        window_done, future = queued.popleft()
                        yield window_done, future.result()
                while queued:
                    window_done, future = queued.popleft()
                    yield window_done, future.result()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        finally:
            for reader in readers:
                reader.close()

    def _scan_mapped_window(self, mapping: mmap.mmap, value_set: ValueSet, start: int, end: int) -> Found:
        """Search bytes ``[start, end)`` of the file in its mapping (compiled engine, guarded against bus errors)."""
        with memoryview(mapping) as whole, whole[start:end] as window:
            if len(window) < end - start:  # the file was already shorter when it was mapped
                raise file_shrank(f"bytes {start:#x}-{end:#x} are not in the file")
            try:
                return value_set.find_in_mapping(window)
            except OSError as error:  # a page of the window could not be read: the file was cut short, or an I/O error
                if os.fstat(self._handle.fileno()).st_size < end:
                    raise file_shrank(f"bytes {start:#x}-{end:#x} could not be read") from None
                raise search_read_failed(start, end, error) from None

    @staticmethod
    def _scan_window(reader: "_WindowReader", value_set: ValueSet, start: int, end: int) -> Found:
        """Search bytes ``[start, end)`` of the file, reading them.

        The compiled engine reads them itself, a cache-sized chunk at a time, so that the words are
        searched in the cache the read has just written them to (ValueSet.find_in_file); otherwise
        the window is read into the thread's buffer and searched there.
        """
        try:
            if value_set.reads_files:
                found, done = value_set.find_in_file(reader.fileno(), start, end - start)
            else:
                data = reader.read(start, end)
                done = len(data)
                found = value_set.find(data[:done - done % value_set.pointer_size])
        except OSError as error:
            raise search_read_failed(start, end, error) from None
        if done < end - start:
            raise file_shrank(f"bytes {start:#x}-{end:#x} could not be read")
        return found

    def _hits(self, values: List[int], found_values: List[np.ndarray],
              found_physical: List[np.ndarray]) -> Dict[int, List[SearchHit]]:
        hits: Dict[int, List[SearchHit]] = {v: [] for v in values}
        if not found_values:
            return hits
        hit_values = np.concatenate(found_values).tolist()
        physical = np.concatenate(found_physical).tolist()
        virtual_of = self._virtual_addresses({pa >> 12 for pa in physical})
        for value, pa in zip(hit_values, physical):
            page_va = virtual_of.get(pa >> 12)
            hit = SearchHit(value, None if page_va is None else page_va + (pa & (PAGE_SIZE - 1)), pa)
            if value in hits:
                hits[value].append(hit)
        for value in hits:
            hits[value].sort(key=lambda h: (h.virtual or 0, h.physical or 0))
        return hits

    def _header_hits(self, physical: List[np.ndarray], next_words: List[np.ndarray]) -> List[HeaderHit]:
        """The collected object headers with their kernel addresses, in address order."""
        if not physical:
            return []
        addresses = np.concatenate(physical).tolist()
        following = np.concatenate(next_words).tolist()
        virtual_of = self._virtual_addresses({pa >> 12 for pa in addresses})
        hits = []
        for pa, next_word in zip(addresses, following):
            page_va = virtual_of.get(pa >> 12)
            hits.append(HeaderHit(None if page_va is None else page_va + (pa & (PAGE_SIZE - 1)), pa, next_word))
        hits.sort(key=lambda h: (h.virtual or 0, h.physical or 0))
        return hits

    def _virtual_addresses(self, pfns: Iterable[int]) -> Dict[int, Optional[int]]:
        """Kernel virtual address of each page frame (the lowest when several map it), or None."""
        wanted = sorted(set(pfns) - set(self._virtual_of_pfn))
        if wanted:
            if self._tables is None:
                self._tables = _KernelMappings(self)
            resolved = self._tables.virtual_addresses(np.array(wanted, dtype=np.uint64))
            for pfn in wanted:
                self._virtual_of_pfn[pfn] = resolved.get(pfn)
        return self._virtual_of_pfn


class _WindowReader:
    """One search thread's read-only handle on the dump and, when it reads windows itself, their buffer."""

    def __init__(self, path: str):
        self._handle = open(path, "rb", buffering=0)
        self._buffer = bytearray()

    def fileno(self) -> int:
        return self._handle.fileno()

    def read(self, start: int, end: int) -> memoryview:
        """Bytes ``[start, end)`` of the file, cut at its end, as a view of the buffer (valid until the next read)."""
        if end - start > len(self._buffer):
            self._buffer = bytearray(end - start)
        view = memoryview(self._buffer)[:end - start]
        self._handle.seek(start)
        done = 0
        while done < len(view):
            count = self._handle.readinto(view[done:])
            if not count:
                break
            done += count
        return view[:done]

    def close(self) -> None:
        self._handle.close()


class _KernelMappings:
    """The kernel half of the x64 page tables, walked from the PML4 down, for physical -> virtual.

    The upper levels (PML4, PDPTs, PDs) are walked once and remembered as the list of leaf page
    tables plus the large (2 MiB) and huge (1 GiB) pages; each lookup then reads the leaf tables in
    batches and keeps only the frames asked for, so memory stays bounded by the answer. The PML4's
    self-map entry (the one pointing back at the PML4, through which the kernel sees its own page
    tables) is skipped. Every table is visited at most once per level, so damaged tables cannot loop.
    """

    def __init__(self, target: DumpFileTarget):
        self.target = target
        self.leaf_tables: List[Tuple[int, int]] = []  # (page table frame, virtual address it starts at)
        self.large: List[Tuple[int, int, int]] = []  # (first frame, frames, virtual address)
        pml4 = (target.header.directory_table_base & PTE_ADDRESS_MASK) >> 12
        seen = {pml4}
        for index, entry in self._present(pml4, KERNEL_HALF_FIRST_PML4):
            table = (entry & PTE_ADDRESS_MASK) >> 12
            if table == pml4:
                continue  # the self-map entry
            self._directory(table, canonical(index << 39), 1, seen)

    def _present(self, pfn: int, first_index: int = 0) -> List[Tuple[int, int]]:
        content = self.target._page(pfn)
        if content is None:
            self.target._missing_tables.add(pfn)
            return []
        entries = np.frombuffer(content, dtype="<u8")
        indices = np.flatnonzero(entries[first_index:] & np.uint64(PTE_PRESENT)) + first_index
        return list(zip(indices.tolist(), entries[indices].tolist()))

    def _directory(self, pfn: int, base: int, level: int, seen: set) -> None:
        """Walk a PDPT (level 1) or PD (level 2) starting at virtual address ``base``."""
        if pfn in seen or len(seen) >= MAX_PAGE_TABLES:
            return
        seen.add(pfn)
        shift = LEVEL_SHIFTS[level]
        for index, entry in self._present(pfn):
            address = base + (index << shift)
            frame = (entry & PTE_ADDRESS_MASK) >> 12
            if entry & PTE_LARGE_PAGE:
                frames = 1 << (shift - 12)
                self.large.append((frame & ~(frames - 1), frames, address))
            elif level == 1:
                self._directory(frame, address, 2, seen)
            elif frame not in seen and len(seen) < MAX_PAGE_TABLES:
                seen.add(frame)
                self.leaf_tables.append((frame, address))

    def virtual_addresses(self, wanted: np.ndarray) -> Dict[int, int]:
        """{frame: lowest kernel virtual address mapping it} for the sorted frames ``wanted``."""
        found: Dict[int, int] = {}

        def keep(frames: np.ndarray, addresses: np.ndarray) -> None:
            for frame, address in zip(frames.tolist(), addresses.tolist()):
                if frame not in found or address < found[frame]:
                    found[frame] = address

        if self.large:  # where each large page's frames start and end among the wanted, all at once
            firsts = np.array([first for first, _, _ in self.large], dtype=np.uint64)
            ends = firsts + np.array([frames for _, frames, _ in self.large], dtype=np.uint64)
            starts, stops = np.searchsorted(wanted, firsts), np.searchsorted(wanted, ends)
            for position in np.flatnonzero(stops > starts).tolist():
                first, _, address = self.large[position]
                inside = wanted[starts[position]:stops[position]]
                keep(inside, np.uint64(address) + (inside - np.uint64(first)) * np.uint64(PAGE_SIZE))
        for batch_start in range(0, len(self.leaf_tables), TABLE_BATCH):
            batch = self.leaf_tables[batch_start:batch_start + TABLE_BATCH]
            contents = []
            bases = []
            for frame, address in batch:
                content = self.target._read_page(frame)
                if content is None:
                    self.target._missing_tables.add(frame)
                    continue
                contents.append(content)
                bases.append(address)
            if not contents:
                continue
            entries = np.frombuffer(b"".join(contents), dtype="<u8")
            frames_mapped = (entries & np.uint64(PTE_ADDRESS_MASK)) >> np.uint64(12)
            hit = (entries & np.uint64(PTE_PRESENT)).astype(bool) & np.isin(frames_mapped, wanted)
            positions = np.flatnonzero(hit)
            if len(positions):
                table_base = np.array(bases, dtype=np.uint64)[positions // 512]
                keep(frames_mapped[positions], table_base + (positions % 512).astype(np.uint64) * np.uint64(PAGE_SIZE))
        return found
