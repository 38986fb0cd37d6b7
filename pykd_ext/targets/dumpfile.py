"""A kernel crash dump file as a Target: ``leakhunt analyze MEMORY.DMP`` on any OS, without a debugger.

The file is a container of physical pages (``PhysicalLayout``: where each page frame is in the file);
the dump's architecture (``pykd_ext.arch``: x64 or ARM64) provides the translator, its page tables read
from those pages (top-level table at the header's DirectoryTableBase), through which every virtual
read goes. The pointer search goes through the stored pages a bounded window at a time on each core,
searching each with ``ValueSet`` (all values of one hunt level in one pass) where the page cache holds it
(a read-only mapping of the file) or after reading it, then turns the physical hits into kernel virtual
addresses with one walk of the kernel half of the page tables for just the page frames that hold hits.
leakhunt's own memory stays bounded whatever the size of the dump.

A small (triage) dump is opened as a ``SmallDumpTarget`` (smalldump.py), whose memory is what its triage
section copied. 32-bit kernel dumps, and dumps whose kernel page tables cannot be used, still give the
bug check, build and architecture from the header; their reads raise MemoryReadError and the search
raises SearchUnavailable saying why.
"""
from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Deque, Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..arch import ARCHITECTURES, arch_named
from ..arch.pagetables import PageTables
from ..search import Found, ValueSet
from ..sources import not_regular_reason, open_error
from .base import (PAGE_SIZE, BugCheck, CrashFacts, HeaderHit, MemoryReadError, Module, ObjectHeaders, PfnRange,
                   ProgressCallback, SearchHit, SearchUnavailable, SymbolNotFound, Target, TargetError,
                   joined, read_from_pages)
from .dumpheader import (DUMP_FULL, H64_CONTEXT_RECORD, MEMORY_DUMP_TYPES, DumpFileError, DumpHeader,
                         PhysicalLayout, format_size, read_physical_layout, truncated_dump)

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
    arch = arch_named(header.arch)
    if arch.paging is None or header.pointer_size != arch.pointer_size:
        readable = " and ".join(known.label for known in ARCHITECTURES.values() if known.paging is not None)
        return (f"{name} is a {8 * header.pointer_size}-bit {arch.label} dump and leakhunt reads memory offline "
                f"only from {readable} dumps; open it in WinDbg and run !py leakhunt there to hunt.")
    return ""


def open_read_only(path: str):
    """``path`` opened read-only, unbuffered; a named pipe, a socket or a device is refused unopened.
    Raises DumpFileError with one line."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise DumpFileError(open_error(path, error)) from None
    try:
        reason = not_regular_reason(os.fstat(descriptor).st_mode)
        if reason:
            raise DumpFileError(f"{path} {reason}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb", buffering=0)
    except BaseException:
        os.close(descriptor)
        raise


def page_tables_unusable(name: str, header: DumpHeader, problem: str) -> str:
    """One sentence for a memory dump whose kernel page tables cannot be used (``problem`` says why)."""
    return (f"the kernel page tables of {name} cannot be used: {problem} (DirectoryTableBase "
            f"{header.directory_table_base:#x}); no kernel address can be read or found, so the dump is damaged: "
            f"copy it again from the crashed machine, or open it in WinDbg and run !py leakhunt there")


def file_shrank(detail: str) -> TargetError:
    """The error for a dump file cut short by another program after leakhunt opened and checked it."""
    return TargetError(f"the dump file is shorter than when leakhunt opened it (was it truncated while leakhunt "
                       f"read it?): {detail}")


def search_read_failed(start: int, end: int, error: OSError) -> TargetError:
    """The error for bytes of the dump that the search could not read although the file still has them."""
    return TargetError(f"reading bytes {start:#x}-{end:#x} of the dump file failed ({error.strerror or error}: a "
                       f"failing disk, or a network share that went away?); copy the dump to a local disk and "
                       f"run leakhunt again")


class DumpFileTarget(Target):
    """A Windows kernel crash dump file, opened read-only."""

    def __init__(self, path: str, handle, header: DumpHeader, layout: Optional[PhysicalLayout],
                 hunt_unavailable: str):
        self.path = path
        self.header = header
        self.layout = layout
        # One sentence when the dump's memory cannot be read (a small or 32-bit dump, page tables that cannot
        # be used), else "".
        self.hunt_unavailable = hunt_unavailable
        self._unreadable = f"leakhunt reads no memory from this {header.type_name} ({header.arch})"
        self.arch = header.arch
        self.pointer_size = header.pointer_size
        self.build = header.build
        self.crash_time = header.crash_time
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
        self._unmapping: Optional[threading.Thread] = None
        self._pages: "OrderedDict[int, Optional[bytes]]" = OrderedDict()
        # Virtual page -> its 4 KiB, for the pages read so far (the kernel objects' pages): one look-up
        # per read instead of a translation and a physical page look-up.
        self._virtual_pages: Dict[int, bytes] = {}
        # The architecture's translator over the file's pages; None where no virtual address can be read
        # (no memory leakhunt reads, or kernel page tables that cannot be used).
        self._page_tables: Optional[PageTables] = None
        if layout is not None:
            tables = PageTables(self.architecture.paging, header.directory_table_base, self._page, self._read_page)
            try:
                problem = tables.kernel_half_problem()
            except TargetError as error:  # the file was cut short since its layout was read
                problem = str(error)
            if problem:
                self.hunt_unavailable = page_tables_unusable(os.path.basename(path), header, problem)
                self._unreadable = f"the kernel page tables of this dump cannot be used ({problem})"
            else:
                self._page_tables = tables

    # ---- opening --------------------------------------------------------------------------------

    @classmethod
    def from_header(cls, path: str, handle, header: DumpHeader) -> "DumpFileTarget":
        """The target of a dump whose header was read from ``handle`` (pykd_ext.sources.open_dump opens
        dumps: a small dump is a SmallDumpTarget); reads where its pages are. Raises DumpFileError."""
        reason = hunt_unavailable_reason(header, os.path.basename(path))
        layout = None if reason else read_physical_layout(handle, header, path)
        if reason and header.dump_type == DUMP_FULL and header.physical_runs:
            # A dump whose memory leakhunt does not read is still refused when it is cut short.
            needed = header.header_size + PAGE_SIZE * sum(pages for _, pages in header.physical_runs)
            if needed > header.file_size:
                raise truncated_dump(path, needed, header.file_size, "its header describes pages up to", header)
        return cls(path, handle, header, layout, reason)

    def searches_done(self) -> None:
        """Unmap the file in a background thread while the report is written: tearing down the mapping
        of a searched dump (a page table entry per page, about 20 ms a GiB) need not delay it. close()
        waits for the thread."""
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            self._wait_for_unmapping()
            self._unmapping = threading.Thread(target=_unmap, args=(mapping,), name="leakhunt-unmap", daemon=True)
            self._unmapping.start()

    def close(self) -> None:
        try:
            self._wait_for_unmapping()
            if self._mapping is not None:
                self._mapping.close()
        finally:
            self._handle.close()

    def _wait_for_unmapping(self) -> None:
        if self._unmapping is not None:
            self._unmapping.join()
            self._unmapping = None

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
        return None if self._page_tables is not None else []

    def crash_facts(self) -> Optional[CrashFacts]:
        """The header's context record of the crashing processor, where the architecture's reports show it."""
        arch = self.architecture
        if arch.context is None or self.pointer_size != arch.pointer_size:
            return None
        self._handle.seek(H64_CONTEXT_RECORD)
        raw = self._handle.read(arch.context.size)
        if len(raw) < arch.context.size:
            raise file_shrank(f"the context record at offset {H64_CONTEXT_RECORD:#x}")
        return CrashFacts(registers=tuple(arch.context.read(raw)), from_triage=False)

    def limitations(self) -> List[str]:
        """Kernel page tables that present entries point to but the dump lacks, and tables reached more
        than once (met so far)."""
        tables = self._page_tables
        if tables is None:
            return []
        notes = []
        if tables.missing_tables:
            notes.append(f"{len(tables.missing_tables)} kernel page table(s) that present page-table entries point to "
                         f"are not in the dump (it is damaged, or left them out): the memory they map can be neither "
                         f"read nor found by the search")
        if tables.repeated_tables:
            notes.append(f"{len(tables.repeated_tables)} kernel page table(s) are reached from more than one entry (a "
                         f"loop in damaged tables, or tables shared by two mappings): each was walked once, so a page "
                         f"found there is named by its first mapping only")
        return notes

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
        if self._page_tables is None:
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
            physical = self._page_tables.translate(page)
            content = None if physical is None else self._page(physical >> 12)
            if content is not None:
                if len(self._virtual_pages) >= PAGE_CACHE_PAGES:
                    self._virtual_pages.clear()
                self._virtual_pages[page] = content
        return content

    def readable_ranges(self, address: int, size: int) -> List[Tuple[int, int]]:
        """The pages of the range that the tables map and the dump holds, from one walk of the range's
        tables (not a walk per page)."""
        if self._page_tables is None or size <= 0 or self.layout is None:
            return []
        first, end = address & ~(PAGE_SIZE - 1), address + size
        pages = self._page_tables.mapped_pages(first, (end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        return joined((max(page, address), min(page + PAGE_SIZE, end)) for page, physical in pages
                      if self.layout.file_offset_of(physical >> 12) is not None)

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
        return self._page_tables is not None

    def _search(self, values: Iterable[int], headers: Optional[ObjectHeaders], pfn_range: Optional[PfnRange],
                progress: Optional[ProgressCallback]) -> Tuple[Dict[int, List[SearchHit]], List[HeaderHit]]:
        if self._page_tables is None:
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
        return self._page_tables.kernel_addresses(pfns)


def _unmap(mapping: mmap.mmap) -> None:
    try:
        mapping.close()
    except BufferError:  # a view of it is still alive somewhere: it is unmapped when that goes
        pass


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
