"""Windows kernel crash dump files: the header and where each physical page lies in the file.

Every kernel crash dump (MEMORY.DMP, a minidump in C:\\Windows\\Minidump, a live kernel dump) starts
with a ``DUMP_HEADER64`` (signature ``PAGEDU64``, 0x2000 bytes) or, on 32-bit Windows, a
``DUMP_HEADER32`` (``PAGEDUMP``, 0x1000 bytes). The header alone gives the bug check code and
parameters, the build, the machine type and the kernel globals the debugger starts from. What follows
it depends on ``DumpType``:

====  ==========================  ===================================================================
type  written by                  page layout after the 0x2000-byte header
====  ==========================  ===================================================================
1     complete/full dump (older)  pages of the PhysicalMemoryBlock runs back to back, from 0x2000
4     small memory dump (triage)  no physical memory: triage data only
5     bitmap dump ("full")        BMP header at 0x2000 ('SDMP' kernel, 'FDMP' complete): a bitmap of
                                  present page frame numbers; the present pages follow in PFN order
                                  from ``FirstPage``
6     bitmap dump ("kernel")      the same bitmap layout as 5: what Windows 10/11 write for a kernel
                                  or automatic memory dump (kdmp-parser calls it LiveKernelBitmapDump)
8, 9  ``.dump /k``, ``/ka``       RDMP header at 0x2000, then (PFN, count) ranges from 0x2030; the
                                  pages of the ranges follow in order from ``FirstPageOffset``
0xA   ``.dump /f``                the same, bounded by the header's TotalNumberOfPages
====  ==========================  ===================================================================

The offsets below are the one place these format facts live. They were checked against the
``HEADER64``/``BMP_HEADER64``/``RDMP_HEADER64`` definitions of kdmp-parser
(``src/lib/kdmp-parser-structs.h``, ``0vercl0k/kdmp-parser``), the 32-bit ``_DMP_HEADER`` of
Volatility's ``crashdump.py`` overlay, the DumpType names of rizin's ``dmp_specs.h`` (5 BITMAPFULL,
6 BITMAPKERNEL; kdmp-parser issue #26: an "Automatic memory dump" of Windows 10 is type 6), and the two
real triage dumps in the test samples.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import BinaryIO, List, Optional, Tuple

import numpy as np

from .base import PAGE_SIZE, BugCheck, PfnRange, TargetError, joined

SIGNATURE = b"PAGE"
VALID_DUMP64 = b"DU64"
VALID_DUMP32 = b"DUMP"
HEADER64_SIZE = 0x2000
HEADER32_SIZE = 0x1000
MINIDUMP_SIGNATURE = b"MDMP"  # a user-mode minidump, not a kernel crash dump

# DUMP_HEADER64 field offsets.
H64_MAJOR_VERSION = 0x08
H64_MINOR_VERSION = 0x0C  # the Windows build number
H64_DIRECTORY_TABLE_BASE = 0x10
H64_PFN_DATABASE = 0x18
H64_PS_LOADED_MODULE_LIST = 0x20
H64_PS_ACTIVE_PROCESS_HEAD = 0x28
H64_MACHINE_IMAGE_TYPE = 0x30
H64_NUMBER_PROCESSORS = 0x34
H64_BUGCHECK_CODE = 0x38
H64_BUGCHECK_PARAMETERS = 0x40  # 4 x u64
H64_KD_DEBUGGER_DATA_BLOCK = 0x80
H64_PHYSICAL_MEMORY_BLOCK = 0x88  # PHYSICAL_MEMORY_DESCRIPTOR64, 700 bytes
H64_CONTEXT_RECORD = 0x348  # CONTEXT (x64), 3000 bytes
H64_DUMP_TYPE = 0xF98
H64_REQUIRED_DUMP_SPACE = 0xFA0
H64_SYSTEM_TIME = 0xFA8
H64_COMMENT = 0xFB0  # 128 bytes

# DUMP_HEADER32 field offsets (all fields 32 bits wide).
H32_MAJOR_VERSION = 0x08
H32_MINOR_VERSION = 0x0C
H32_DIRECTORY_TABLE_BASE = 0x10
H32_PFN_DATABASE = 0x14
H32_PS_LOADED_MODULE_LIST = 0x18
H32_PS_ACTIVE_PROCESS_HEAD = 0x1C
H32_MACHINE_IMAGE_TYPE = 0x20
H32_NUMBER_PROCESSORS = 0x24
H32_BUGCHECK_CODE = 0x28
H32_BUGCHECK_PARAMETERS = 0x2C  # 4 x u32
H32_KD_DEBUGGER_DATA_BLOCK = 0x60
H32_PHYSICAL_MEMORY_BLOCK = 0x64  # PHYSICAL_MEMORY_DESCRIPTOR32, 700 bytes
H32_DUMP_TYPE = 0xF88

PHYSICAL_MEMORY_BLOCK_SIZE = 700
# PHYSICAL_MEMORY_DESCRIPTOR: NumberOfRuns (u32), NumberOfPages, then runs of (BasePage, PageCount).
RUNS_OFFSET = {8: 0x10, 4: 0x08}
MAX_RUNS = {size: (PHYSICAL_MEMORY_BLOCK_SIZE - RUNS_OFFSET[size]) // (2 * size) for size in (8, 4)}

# The BMP header of bitmap dumps (types 5 and 6), at 0x2000.
BMP_SUMMARY_SIGNATURE = b"SDMP"  # a kernel memory dump: kernel pages only
BMP_FULL_SIGNATURE = b"FDMP"  # a complete memory dump stored as a bitmap
BMP_VALID_DUMP = b"DUMP"
BMP_FIRST_PAGE = 0x20  # u64: file offset of the first stored page
BMP_TOTAL_PRESENT_PAGES = 0x28  # u64: number of bits set
BMP_PAGES = 0x30  # u64: number of bits in the bitmap (the machine's page frames)
BMP_BITMAP = 0x38

# The RDMP header of kernel range dumps (types 8, 9 and 0xA), at 0x2000.
RDMP_MARKER = 0x40
RDMP_SIGNATURE = b"RDMP"
RDMP_VALID_DUMP = b"DUMP"
RDMP_METADATA_SIZE = 0x10  # u64
RDMP_FIRST_PAGE_OFFSET = 0x18  # u64
RDMP_TOTAL_NUMBER_OF_PAGES = 0x28  # u64, complete dumps (0xA) only
RDMP_RANGES = 0x30  # (PageFileNumber u64, NumberOfPages u64) pairs
RDMP_HEADER_SIZE = 0x20

DUMP_FULL = 1
DUMP_SUMMARY = 2
DUMP_HEADER_ONLY = 3
DUMP_TRIAGE = 4
DUMP_BITMAP = 5  # DUMP_TYPE_BITMAP_FULL in the Windows SDK
DUMP_KERNEL_BITMAP = 6  # DUMP_TYPE_BITMAP_KERNEL
DUMP_KERNEL_MEMORY = 8
DUMP_KERNEL_AND_USER = 9
DUMP_COMPLETE = 0xA

DUMP_TYPE_NAMES = {
    DUMP_FULL: "full memory dump",
    DUMP_SUMMARY: "summary dump",
    DUMP_HEADER_ONLY: "header-only dump",
    DUMP_TRIAGE: "small memory dump",
    DUMP_BITMAP: "bitmap memory dump",
    DUMP_KERNEL_BITMAP: "kernel bitmap memory dump",
    DUMP_KERNEL_MEMORY: "kernel memory dump",
    DUMP_KERNEL_AND_USER: "kernel and user memory dump",
    DUMP_COMPLETE: "complete memory dump",
}
# The dump types whose physical memory leakhunt reads (64-bit only).
MEMORY_DUMP_TYPES = (DUMP_FULL, DUMP_BITMAP, DUMP_KERNEL_BITMAP, DUMP_KERNEL_MEMORY, DUMP_KERNEL_AND_USER,
                     DUMP_COMPLETE)

MACHINE_X64 = 0x8664
MACHINE_X86 = 0x014C
MACHINE_ARM64 = 0xAA64
ARCHES = {MACHINE_X64: "x64", MACHINE_X86: "x86", MACHINE_ARM64: "arm64"}

# Refuse page-location tables larger than this rather than exhaust memory on a hostile file.
MAX_METADATA_BYTES = 256 * 1024 * 1024
# x64 physical addresses have at most 52 bits: no page frame number reaches this.
PFN_LIMIT = 1 << 40
FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)
# Bits of a bitmap turned into runs at a time (keeps the unpacked bits small).
_BITMAP_CHUNK_BYTES = 1 << 20


class DumpFileError(TargetError):
    """The file is not a kernel crash dump, or it is truncated or corrupt."""


class DamagedDumpError(DumpFileError):
    """The file is a kernel crash dump, but shorter than its header says or corrupt: it is refused, never
    analyzed as if it were whole (``leakhunt triage`` gives it the status ``damaged``)."""


def truncated_dump(path: str, needed: int, file_size: int, what: str, header: "DumpHeader") -> DamagedDumpError:
    """The refusal of a dump shorter than its header says: the sizes, and the bug check the header
    records (what is left worth showing)."""
    code, parameters = header.bugcheck.code, header.bugcheck.parameters
    return DamagedDumpError(
        f"{path} is truncated: {what} {format_size(needed)} but the file ends after {format_size(file_size)}, "
        f"{format_size(needed - file_size)} short (an interrupted copy, or the disk filled while Windows wrote it); "
        f"the header records bug check {code:#x} ({', '.join(f'{p:#x}' for p in parameters)})")


@dataclass(frozen=True)
class DumpHeader:
    """The facts of a DUMP_HEADER64 or DUMP_HEADER32."""

    pointer_size: int  # 8 for PAGEDU64, 4 for PAGEDUMP
    major_version: int  # 0xF for a free build, 0xC for a checked build
    build: int  # MinorVersion
    directory_table_base: int
    pfn_database: int
    ps_loaded_module_list: int
    ps_active_process_head: int
    machine: int  # IMAGE_FILE_MACHINE_*
    processors: int
    bugcheck: BugCheck
    kd_debugger_data_block: int
    dump_type: int
    physical_runs: Optional[Tuple[Tuple[int, int], ...]]  # (BasePage, PageCount); None when not filled in
    file_size: int
    system_time: Optional[int] = None  # SystemTime, a FILETIME (64-bit headers), None when not filled in

    @property
    def crash_time(self) -> Optional[str]:
        """SystemTime as ISO 8601 UTC, or None."""
        return filetime_text(self.system_time) if self.system_time else None

    @property
    def arch(self) -> str:
        return ARCHES[self.machine]

    @property
    def header_size(self) -> int:
        return HEADER64_SIZE if self.pointer_size == 8 else HEADER32_SIZE

    @property
    def type_name(self) -> str:
        return DUMP_TYPE_NAMES.get(self.dump_type, f"dump of unknown type {self.dump_type:#x}")

    @property
    def highest_machine_pfn(self) -> Optional[int]:
        """The machine's last physical page frame, from the PhysicalMemoryBlock runs."""
        if not self.physical_runs:
            return None
        return max(base + count - 1 for base, count in self.physical_runs)


def read_dump_header(handle: BinaryIO, path: str, file_size: int) -> DumpHeader:
    """Parse the header at the start of ``handle`` (an open, read-only dump file)."""
    if file_size == 0:
        raise DumpFileError(f"{path} is empty, not a crash dump")
    handle.seek(0)
    raw = handle.read(HEADER64_SIZE)
    if raw[:4] == MINIDUMP_SIGNATURE:
        raise DumpFileError(f"{path} is a user-mode minidump (MDMP), not a kernel crash dump")
    if raw[:4] != SIGNATURE or raw[4:8] not in (VALID_DUMP64, VALID_DUMP32):
        raise DumpFileError(f"{path} is not a Windows kernel crash dump (it does not start with PAGEDU64 or "
                            f"PAGEDUMP)")
    pointer_size = 8 if raw[4:8] == VALID_DUMP64 else 4
    needed = HEADER64_SIZE if pointer_size == 8 else HEADER32_SIZE
    if len(raw) < needed:
        raise DamagedDumpError(f"{path} is truncated: {len(raw)} bytes, but the crash dump header alone is {needed}")
    header = _parse64(raw, file_size) if pointer_size == 8 else _parse32(raw, file_size)
    if header.machine not in ARCHES:
        raise DamagedDumpError(f"{path} is corrupt: unknown machine type {header.machine:#x} in its header")
    return header


def _u32(raw: bytes, offset: int) -> int:
    return struct.unpack_from("<I", raw, offset)[0]


def _u64(raw: bytes, offset: int) -> int:
    return struct.unpack_from("<Q", raw, offset)[0]


def _parse64(raw: bytes, file_size: int) -> DumpHeader:
    return DumpHeader(
        pointer_size=8,
        major_version=_u32(raw, H64_MAJOR_VERSION),
        build=_u32(raw, H64_MINOR_VERSION),
        directory_table_base=_u64(raw, H64_DIRECTORY_TABLE_BASE),
        pfn_database=_u64(raw, H64_PFN_DATABASE),
        ps_loaded_module_list=_u64(raw, H64_PS_LOADED_MODULE_LIST),
        ps_active_process_head=_u64(raw, H64_PS_ACTIVE_PROCESS_HEAD),
        machine=_u32(raw, H64_MACHINE_IMAGE_TYPE),
        processors=_u32(raw, H64_NUMBER_PROCESSORS),
        bugcheck=BugCheck(_u32(raw, H64_BUGCHECK_CODE), struct.unpack_from("<4Q", raw, H64_BUGCHECK_PARAMETERS)),
        kd_debugger_data_block=_u64(raw, H64_KD_DEBUGGER_DATA_BLOCK),
        dump_type=_u32(raw, H64_DUMP_TYPE),
        physical_runs=_physical_runs(raw, H64_PHYSICAL_MEMORY_BLOCK, 8),
        file_size=file_size,
        system_time=system_time_of(raw[H64_SYSTEM_TIME:H64_SYSTEM_TIME + 8]),
    )


def system_time_of(raw: bytes) -> Optional[int]:
    """The FILETIME of a header's SystemTime, or None when it is not filled in (0, or the "PAGE" bytes
    Windows fills unused header space with)."""
    if len(raw) != 8 or raw == SIGNATURE * 2:
        return None
    return struct.unpack("<Q", raw)[0] or None


def filetime_text(ticks: int) -> Optional[str]:
    """A FILETIME (100 ns intervals since 1601-01-01 UTC) as ISO 8601 UTC, or None when out of range."""
    try:
        moment = FILETIME_EPOCH + timedelta(microseconds=ticks // 10)
    except OverflowError:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse32(raw: bytes, file_size: int) -> DumpHeader:
    return DumpHeader(
        pointer_size=4,
        major_version=_u32(raw, H32_MAJOR_VERSION),
        build=_u32(raw, H32_MINOR_VERSION),
        directory_table_base=_u32(raw, H32_DIRECTORY_TABLE_BASE),
        pfn_database=_u32(raw, H32_PFN_DATABASE),
        ps_loaded_module_list=_u32(raw, H32_PS_LOADED_MODULE_LIST),
        ps_active_process_head=_u32(raw, H32_PS_ACTIVE_PROCESS_HEAD),
        machine=_u32(raw, H32_MACHINE_IMAGE_TYPE),
        processors=_u32(raw, H32_NUMBER_PROCESSORS),
        bugcheck=BugCheck(_u32(raw, H32_BUGCHECK_CODE), struct.unpack_from("<4I", raw, H32_BUGCHECK_PARAMETERS)),
        kd_debugger_data_block=_u32(raw, H32_KD_DEBUGGER_DATA_BLOCK),
        dump_type=_u32(raw, H32_DUMP_TYPE),
        physical_runs=_physical_runs(raw, H32_PHYSICAL_MEMORY_BLOCK, 4),
        file_size=file_size,
    )


def _physical_runs(raw: bytes, offset: int, width: int) -> Optional[Tuple[Tuple[int, int], ...]]:
    """The PhysicalMemoryBlock runs, or None when the descriptor is not filled in.

    Windows fills unused header space with the bytes "PAGE"; small dumps leave the descriptor so.
    """
    count = _u32(raw, offset)
    word = "<Q" if width == 8 else "<I"
    total = struct.unpack_from(word, raw, offset + (8 if width == 8 else 4))[0]
    if count == 0 or count > MAX_RUNS[width]:
        return None
    runs = tuple(struct.unpack_from("<2Q" if width == 8 else "<2I", raw, offset + RUNS_OFFSET[width] + i * 2 * width)
                 for i in range(count))
    if sum(pages for _, pages in runs) != total or any(pages == 0 for _, pages in runs):
        return None
    return runs


# ---- where the pages are --------------------------------------------------------------------

class PhysicalLayout:
    """Which page frames a dump holds and where each one is in the file.

    The stored pages are one contiguous area of the file ``[data_start, data_end)``, cut into
    extents: ``count[i]`` pages of consecutive frames from ``first_pfn[i]``, stored from file
    offset ``file_offset[i]``. Extents are sorted by file offset, which for every format is also
    page frame order.
    """

    def __init__(self, first_pfn: np.ndarray, count: np.ndarray, data_start: int):
        self.first_pfn = first_pfn.astype(np.uint64)
        self.count = count.astype(np.uint64)
        if len(self.count) and (int(self.first_pfn.max()) >= PFN_LIMIT or int(self.count.max()) > PFN_LIMIT
                                or int((self.first_pfn + self.count).max()) > PFN_LIMIT):
            raise ValueError("a page range lies beyond the largest physical address of an x64 machine")
        ends = np.cumsum(self.count, dtype=np.uint64)  # no overflow: fewer than 2**24 ranges of < 2**40
        if len(ends) and int(ends[-1]) > PFN_LIMIT:
            raise ValueError("its page ranges hold more pages than an x64 machine can have")
        self.file_offset = np.uint64(data_start) + (ends - self.count) * np.uint64(PAGE_SIZE)
        self.data_start = data_start
        self.pages = int(ends[-1]) if len(ends) else 0
        self.data_end = data_start + self.pages * PAGE_SIZE
        if len(self.first_pfn) > 1 and np.any(self.first_pfn[1:] < self.first_pfn[:-1] + self.count[:-1]):
            raise ValueError("page ranges overlap or are out of order")
        self.highest_pfn = int(self.first_pfn[-1] + self.count[-1] - np.uint64(1)) if self.pages else None

    def file_offset_of(self, pfn: int) -> Optional[int]:
        """File offset of page frame ``pfn``, or None when the dump does not hold it."""
        index = int(np.searchsorted(self.first_pfn, np.uint64(pfn), side="right")) - 1
        if index < 0 or pfn >= int(self.first_pfn[index] + self.count[index]):
            return None
        return int(self.file_offset[index]) + (pfn - int(self.first_pfn[index])) * PAGE_SIZE

    def physical_addresses(self, file_offsets: np.ndarray) -> np.ndarray:
        """Physical address of each file offset inside the stored pages (vectorised)."""
        offsets = file_offsets.astype(np.uint64)
        index = np.searchsorted(self.file_offset, offsets, side="right") - 1
        return self.first_pfn[index] * np.uint64(PAGE_SIZE) + (offsets - self.file_offset[index])

    def file_ranges(self, pfn_range: Optional[PfnRange] = None) -> List[Tuple[int, int]]:
        """The file byte ranges holding the frames of ``pfn_range`` (all frames when None)."""
        if pfn_range is None:
            return [(self.data_start, self.data_end)] if self.pages else []
        ranges: List[Tuple[int, int]] = []
        lo = np.maximum(self.first_pfn, np.uint64(min(pfn_range.first, PFN_LIMIT)))
        hi = np.minimum(self.first_pfn + self.count, np.uint64(min(pfn_range.last + 1, PFN_LIMIT)))
        for index in np.flatnonzero(lo < hi).tolist():
            start = int(self.file_offset[index]) + int(lo[index] - self.first_pfn[index]) * PAGE_SIZE
            ranges.append((start, start + int(hi[index] - lo[index]) * PAGE_SIZE))
        return joined(ranges)


def read_physical_layout(handle: BinaryIO, header: DumpHeader, path: str) -> PhysicalLayout:
    """Where the pages of a 64-bit full, bitmap or range dump are. Raises DumpFileError."""
    if header.dump_type == DUMP_FULL:
        if not header.physical_runs:
            raise DamagedDumpError(f"{path} is corrupt: its PhysicalMemoryBlock, which says where the pages are, is "
                                f"not filled in")
        runs = np.array(header.physical_runs, dtype=np.uint64).reshape(-1, 2)
        layout = _layout(runs[:, 0], runs[:, 1], HEADER64_SIZE, path)
    elif header.dump_type in (DUMP_BITMAP, DUMP_KERNEL_BITMAP):
        layout = _bitmap_layout(handle, header, path)
    else:
        layout = _range_layout(handle, header, path)
    if layout.data_end > header.file_size:
        raise truncated_dump(path, layout.data_end, header.file_size, "its header describes pages up to", header)
    return layout


def _layout(first_pfn: np.ndarray, count: np.ndarray, data_start: int, path: str) -> PhysicalLayout:
    try:
        return PhysicalLayout(first_pfn, count, data_start)
    except ValueError as error:
        raise DamagedDumpError(f"{path} is corrupt: {error}") from None


def _read_at(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    return handle.read(size)


def _bitmap_layout(handle: BinaryIO, header: DumpHeader, path: str) -> PhysicalLayout:
    raw = _read_at(handle, HEADER64_SIZE, BMP_BITMAP)
    if len(raw) < BMP_BITMAP:
        raise DamagedDumpError(f"{path} is truncated inside its bitmap header")
    if raw[:4] not in (BMP_SUMMARY_SIGNATURE, BMP_FULL_SIGNATURE) or raw[4:8] != BMP_VALID_DUMP:
        raise DamagedDumpError(f"{path} is corrupt: its bitmap header (SDMP/FDMP) is missing")
    first_page, present, bits = struct.unpack_from("<3Q", raw, BMP_FIRST_PAGE)
    bitmap_bytes = (bits + 7) // 8
    if bitmap_bytes > MAX_METADATA_BYTES or first_page < HEADER64_SIZE + BMP_BITMAP + bitmap_bytes:
        raise DamagedDumpError(f"{path} is corrupt: its bitmap of {bits} pages does not fit before the first page "
                            f"at {first_page:#x}")
    bitmap = _read_at(handle, HEADER64_SIZE + BMP_BITMAP, bitmap_bytes)
    if len(bitmap) < bitmap_bytes:
        raise DamagedDumpError(f"{path} is truncated inside its page bitmap")
    starts, lengths = runs_of_set_bits(bitmap, bits)
    if int(lengths.sum()) != present:
        raise DamagedDumpError(f"{path} is corrupt: its bitmap marks {int(lengths.sum())} pages present but the "
                            f"header counts {present}")
    return _layout(starts, lengths, first_page, path)


def runs_of_set_bits(bitmap: bytes, bits: int) -> Tuple[np.ndarray, np.ndarray]:
    """(first bit, length) of every run of set bits among the first ``bits`` bits (LSB first)."""
    data = np.frombuffer(bitmap, dtype=np.uint8)
    rises: List[np.ndarray] = []
    falls: List[np.ndarray] = []
    previous = 0  # the last bit of the previous chunk
    end = 0
    for chunk_start in range(0, len(data), _BITMAP_CHUNK_BYTES):
        base = chunk_start * 8
        chunk = np.unpackbits(data[chunk_start:chunk_start + _BITMAP_CHUNK_BYTES], bitorder="little")
        chunk = chunk[:max(0, bits - base)].astype(np.int8)
        if not len(chunk):
            break
        edges = np.diff(chunk, prepend=np.int8(previous))
        rises.append(np.flatnonzero(edges == 1) + base)
        falls.append(np.flatnonzero(edges == -1) + base)
        previous = int(chunk[-1])
        end = base + len(chunk)
    if previous:
        falls.append(np.array([end]))
    if not rises:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.uint64)
    starts = np.concatenate(rises).astype(np.uint64)
    return starts, np.concatenate(falls).astype(np.uint64) - starts


def _range_layout(handle: BinaryIO, header: DumpHeader, path: str) -> PhysicalLayout:
    raw = _read_at(handle, HEADER64_SIZE, RDMP_RANGES)
    if len(raw) < RDMP_RANGES:
        raise DamagedDumpError(f"{path} is truncated inside its RDMP header")
    marker = _u32(raw, 0)
    metadata_size, first_page_offset = struct.unpack_from("<2Q", raw, RDMP_METADATA_SIZE)
    if marker != RDMP_MARKER or raw[4:8] != RDMP_SIGNATURE or raw[8:12] != RDMP_VALID_DUMP:
        raise DamagedDumpError(f"{path} is corrupt: its page range header (RDMP) is missing")
    if (metadata_size % 16 or metadata_size > MAX_METADATA_BYTES
            or first_page_offset != HEADER64_SIZE + RDMP_HEADER_SIZE + metadata_size):
        raise DamagedDumpError(f"{path} is corrupt: its RDMP header sizes do not agree")
    table = _read_at(handle, HEADER64_SIZE + RDMP_RANGES, first_page_offset - HEADER64_SIZE - RDMP_RANGES)
    pairs = np.frombuffer(table[:len(table) // 16 * 16], dtype="<u8").reshape(-1, 2)
    if header.dump_type == DUMP_COMPLETE:
        total = _u64(raw, RDMP_TOTAL_NUMBER_OF_PAGES)
        pages = np.cumsum(pairs[:, 1], dtype=np.uint64)
        used = int(np.searchsorted(pages, np.uint64(total), side="left")) + 1 if total else 0
        if used > len(pairs) or (used and int(pages[used - 1]) != total):
            raise DamagedDumpError(f"{path} is corrupt: its page ranges do not add up to the {total} pages it "
                                f"announces")
        pairs = pairs[:used]
    else:
        zero = np.flatnonzero(pairs[:, 0] == 0)  # the list ends at the first range starting at frame 0
        if len(zero):
            pairs = pairs[:zero[0]]
    return _layout(pairs[:, 0], pairs[:, 1], first_page_offset, path)


def format_size(count: int) -> str:
    """Sizes in messages and descriptions, one style everywhere: ``1.0 GiB``, ``12.5 MiB``, ``563.1 KiB``,
    ``700 bytes``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.1f} {unit}"
    return f"{count} bytes"

