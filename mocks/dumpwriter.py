"""Write synthesized kernel memory as real-format Windows kernel crash dump files.

A ``DumpImage`` is a machine: the scenario's pages at their physical frames, page tables of the
scenario's architecture (x64, or ARM64) that map each page's virtual address to its frame (built here, at
frames the scenario does not use), optional 2 MiB / 1 GiB mappings, and an optional region of
pointer-rich noise pages for benchmarks. ``write`` streams it to a file as a full (1), bitmap (5, 6),
kernel memory (8, 9) or complete (0xA) dump with a ``DUMP_HEADER64`` the way Windows fills one: "PAGE"
filler, the bug check, PsLoadedModuleList, the machine's PhysicalMemoryBlock runs and a plausible
CONTEXT of the architecture. Noise pages are generated chunk by chunk while writing, so a dump of many
GiB never sits in memory.

32-bit scenarios are written as a PAGEDUMP full dump (header and pages; no x86 page tables, which
leakhunt does not read offline).

Every format offset comes from ``pykd_ext.targets.dumpheader``; tests read the files back with
kdmp-parser as an independent check. The page-table entries and the CONTEXT records are written from
the processor manuals and the reference notes (the constants below), never with leakhunt's own tables
(``pykd_ext.arch``), so that a wrong format in either cannot hide behind the other.
"""
from __future__ import annotations

import struct
import bisect
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple

import numpy as np

from pykd_ext.targets.base import PAGE_SIZE
from pykd_ext.targets.dumpheader import (
    BMP_BITMAP, BMP_FIRST_PAGE, BMP_FULL_SIGNATURE, BMP_SUMMARY_SIGNATURE, BMP_VALID_DUMP, DUMP_BITMAP, DUMP_COMPLETE,
    DUMP_FULL, DUMP_KERNEL_AND_USER, DUMP_KERNEL_MEMORY, DUMP_KERNEL_BITMAP, H32_BUGCHECK_CODE,
    H32_BUGCHECK_PARAMETERS, H32_DIRECTORY_TABLE_BASE, H32_DUMP_TYPE, H32_MACHINE_IMAGE_TYPE, H32_MAJOR_VERSION,
    H32_MINOR_VERSION, H32_NUMBER_PROCESSORS, H32_PHYSICAL_MEMORY_BLOCK, H32_PS_LOADED_MODULE_LIST, H64_BUGCHECK_CODE,
    H64_BUGCHECK_PARAMETERS, H64_COMMENT, H64_CONTEXT_RECORD, H64_DIRECTORY_TABLE_BASE, H64_DUMP_TYPE,
    H64_KD_DEBUGGER_DATA_BLOCK, H64_MACHINE_IMAGE_TYPE, H64_MAJOR_VERSION, H64_MINOR_VERSION, H64_NUMBER_PROCESSORS,
    H64_PFN_DATABASE, H64_PHYSICAL_MEMORY_BLOCK, H64_PS_ACTIVE_PROCESS_HEAD, H64_PS_LOADED_MODULE_LIST,
    H64_REQUIRED_DUMP_SPACE, H64_SYSTEM_TIME, HEADER32_SIZE, HEADER64_SIZE, MACHINE_ARM64, MACHINE_X64,
    MACHINE_X86, RDMP_FIRST_PAGE_OFFSET, RDMP_HEADER_SIZE, RDMP_MARKER, RDMP_METADATA_SIZE, RDMP_RANGES,
    RDMP_SIGNATURE, RDMP_TOTAL_NUMBER_OF_PAGES, RDMP_VALID_DUMP, RUNS_OFFSET, SIGNATURE, VALID_DUMP32, VALID_DUMP64)
from pykd_ext.targets.snapshot import SnapshotData

from .memory import REGIONS

# Page-table frames are handed out from here up: below the scenario builder's first frame (0x1000).
TABLE_FIRST_PFN = 0x100
# The PML4 slot that maps the page tables themselves (Windows 10 before 1607 always used 0x1ED).
SELF_MAP_INDEX = 0x1ED
# x64 page-table entry bits (Intel SDM vol. 3 §4.5, tables 4-15 to 4-20), written from the manual rather
# than from leakhunt's own tables; kdmp-parser reads the result back as the independent check.
PTE_PRESENT = 0x1
PTE_LARGE_PAGE = 0x80  # PS in a PDPTE (1 GiB) or a PDE (2 MiB)
PTE_WRITE = 0x2
PTE_ACCESSED = 0x20
PTE_DIRTY = 0x40
PTE_GLOBAL = 0x100
PTE_NO_EXECUTE = 1 << 63
TABLE_FLAGS = PTE_PRESENT | PTE_WRITE | PTE_ACCESSED
DATA_FLAGS = PTE_PRESENT | PTE_WRITE | PTE_ACCESSED | PTE_DIRTY | PTE_GLOBAL | PTE_NO_EXECUTE
X64_ADDRESS_MASK = 0x000FFFFFFFFFF000  # physical address bits 51:12

# ARM64 translation table descriptors, 4 KiB granule, 48-bit output addresses (ARMv8-A Architecture
# Reference Manual, ARM DDI 0487, "VMSAv8-64 translation table format descriptors"): bit 0 valid; bit 1
# set: a table (levels 0-2) or a page (level 3), clear at level 1 or 2: a 1 GiB or 2 MiB block; output
# address bits 47:12; lower attributes AttrIndx 4:2, SH 9:8, AF 10; upper attributes PXN 53, UXN 54.
# Windows keeps its Writable flag in software bit 55 and sets PXN and UXN in table descriptors too
# (reference/arm64-kernel.md: McGarr's walk, MemProcFS's self-map test).
ARM64_VALID = 1 << 0
ARM64_TABLE_OR_PAGE = 1 << 1
ARM64_INNER_SHAREABLE = 0b11 << 8
ARM64_ACCESSED = 1 << 10
ARM64_PXN = 1 << 53
ARM64_UXN = 1 << 54
ARM64_WRITABLE = 1 << 55
ARM64_ADDRESS_MASK = 0x0000FFFFFFFFF000
ARM64_TABLE_FLAGS = ARM64_VALID | ARM64_TABLE_OR_PAGE | ARM64_INNER_SHAREABLE | ARM64_ACCESSED | ARM64_PXN | ARM64_UXN
ARM64_PAGE_FLAGS = ARM64_TABLE_FLAGS | ARM64_WRITABLE
ARM64_BLOCK_FLAGS = ARM64_PAGE_FLAGS & ~ARM64_TABLE_OR_PAGE
# A level-3 entry in transition (paged out, its frame still holding the page): Valid and Prototype (bit 10)
# clear, Transition (bit 11) set, the frame in the output address bits (MemProcFS, mm_arm64.c).
ARM64_TRANSITION = 1 << 11
# The top-level slot that maps the tables themselves: McGarr saw MmPteBase 0xFFFF8600`00000000 (index 0x10C).
ARM64_SELF_MAP_INDEX = (0xFFFF860000000000 >> 39) & 0x1FF
# Where noise pages are mapped (2 MiB pages), away from the scenario builder's pool and images.
NOISE_VA = 0xFFFFC58000000000
# Where the noise's other kernel pointers point.
OTHER_KERNEL_REGION = 0xFFFFB50000000000
# Frames written per step while streaming.
CHUNK_PAGES = 2048
# Noise is generated in blocks of this many frames, each from its own seed.
NOISE_BLOCK_PAGES = 512

# ARM64 CONTEXT (winnt.h ARM64_NT_CONTEXT; reference/arm64-kernel.md): ContextFlags, Cpsr, X0..X28 from 0x8,
# Fp 0xF0, Lr 0xF8, Sp 0x100, Pc 0x108; 0x390 bytes. CONTEXT_ARM64 | CONTROL | INTEGER | FLOATING_POINT.
ARM64_CONTEXT_SIZE = 0x390
ARM64_CONTEXT_FLAGS = 0x0
ARM64_CONTEXT_CPSR = 0x4
ARM64_CONTEXT_X0 = 0x8
ARM64_CONTEXT_FP = 0xF0
ARM64_CONTEXT_LR = 0xF8
ARM64_CONTEXT_SP = 0x100
ARM64_CONTEXT_PC = 0x108
ARM64_CONTEXT_FULL = 0x400007
ARM64_CPSR_EL1H = 0x5  # M[3:0] = EL1 with SP_EL1
# Where the synthesized ARM64 register state points: KeBugCheckEx's caller and its stack.
ARM64_PC_OFFSET = 0x1000  # in nt
ARM64_LR_OFFSET = 0x2468  # in nt
ARM64_SP = 0xFFFFF8031F7FEDA0

# x64 CONTEXT (winnt.h) offsets used for a plausible register state at KeBugCheckEx.
CONTEXT_FLAGS = 0x30
CONTEXT_MXCSR = 0x34
CONTEXT_SEGMENTS = 0x38  # SegCs, SegDs, SegEs, SegFs, SegGs, SegSs (u16 each)
CONTEXT_EFLAGS = 0x44
# Rax, Rcx, Rdx, Rbx, Rsp, Rbp, Rsi, Rdi, R8-R15 from 0x78, then Rip at 0xF8 (8 bytes each).
CONTEXT_INTEGER = {name: 0x78 + 8 * index for index, name in enumerate(
    ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
     "rip"))}
CONTEXT_FLTSAVE_MXCSR = 0x118  # XMM_SAVE_AREA32.MxCsr inside FltSave at 0x100
CONTEXT_AMD64_FULL = 0x10000B  # CONTEXT_AMD64 | CONTROL | INTEGER | FLOATING_POINT
MXCSR_DEFAULT = 0x1F80
# 2024-01-01 00:00 UTC as a FILETIME, so that the same scenario always gives the same file.
SYSTEM_TIME = 133485408000000000

MEMORY_LAYOUTS = {DUMP_FULL: "runs", DUMP_BITMAP: "bitmap", DUMP_KERNEL_BITMAP: "bitmap",
                  DUMP_KERNEL_MEMORY: "ranges", DUMP_KERNEL_AND_USER: "ranges", DUMP_COMPLETE: "ranges"}


class NoiseRegion:
    """``pages`` frames from ``first_pfn`` filled with pointer-rich words, generated on demand.

    Words are 35% kernel pointers (16-byte aligned; half of them into the 4 GiB of pool that holds the
    scenario's objects, half elsewhere), 20% small integers, 25% zeros and 20% random 64-bit values:
    the mix a kernel dump's pages hold. A pointer may by chance equal an object's address, as stale
    references in real memory do; the hunt must reject those.
    """

    def __init__(self, first_pfn: int, pages: int, seed: int):
        self.first_pfn = first_pfn
        self.pages = pages
        self.seed = seed

    def content(self, first: int, count: int) -> bytes:
        """The bytes of frames ``first .. first+count-1``: the same for a frame however it is asked for."""
        blocks = range(first // NOISE_BLOCK_PAGES, (first + count - 1) // NOISE_BLOCK_PAGES + 1)
        data = b"".join(self._block(block) for block in blocks)
        start = (first - blocks[0] * NOISE_BLOCK_PAGES) * PAGE_SIZE
        return data[start:start + count * PAGE_SIZE]

    def _block(self, block: int) -> bytes:
        rng = np.random.default_rng([self.seed, block])
        words = NOISE_BLOCK_PAGES * PAGE_SIZE // 8
        roll = rng.integers(0, 100, words, dtype=np.uint8)
        values = rng.integers(0, 1 << 63, words, dtype=np.uint64)
        offsets = (values >> np.uint64(27)) & np.uint64(0xFFFFFFF0)
        pool = np.uint64(REGIONS[8]["pool"] & ~0xFFFFFFFF) + offsets
        elsewhere = np.uint64(OTHER_KERNEL_REGION) + (offsets << np.uint64(4))
        out = np.where(roll < 17, pool, np.where(roll < 35, elsewhere, np.where(
            roll < 55, values & np.uint64(0xFFFF), np.where(roll < 80, np.uint64(0), values))))
        return out.astype("<u8").tobytes()


def kernel_context(data) -> Dict[str, int]:
    """The registers a kernel dump of ``data`` records in its header (and that a debugger's ``r`` shows
    for it), by the debugger's names: KeBugCheckEx's as it is entered (x64: the code in rcx, P1..P3 in
    rdx, r8, r9, rip in nt; ARM64: the code in x0, P1..P4 in x1..x4, pc and lr in nt), with the registers
    of ``data.crash_facts`` over them when the scene places the crash in code of its own."""
    kernel = next((m for m in data.modules if m.name == "nt"), None)
    code, parameters = data.bugcheck.code, tuple(data.bugcheck.parameters)
    if data.arch == "arm64":
        registers = {f"x{index}": 0 for index in range(29)}
        registers.update({f"x{index}": value for index, value in enumerate((code,) + parameters)})
        registers.update(sp=ARM64_SP, fp=ARM64_SP + 0x40, pc=kernel.base + ARM64_PC_OFFSET if kernel else 0,
                         lr=kernel.base + ARM64_LR_OFFSET if kernel else 0)
    else:
        registers = dict.fromkeys(CONTEXT_INTEGER, 0)
        registers.update(rcx=code, rdx=parameters[0], r8=parameters[1], r9=parameters[2], rsp=0xFFFFF8031F7FEE18,
                         rip=kernel.base + 0x1000 if kernel else 0, efl=0x282)
    if data.crash_facts is not None:  # leakhunt's names are the debugger's but for x64's flags
        recorded = {"efl" if name == "eflags" else name: value for name, value in data.crash_facts.registers}
        registers.update((name, value) for name, value in recorded.items() if name in registers)
    return registers


class DumpImage:
    """The physical memory and kernel page tables of a synthesized machine."""

    def __init__(self, data: SnapshotData, noise_pages: int = 0, seed: int = 1, processors: int = 4):
        self.data = data
        self.processors = processors
        self.pages: Dict[int, bytes] = {}  # frame -> content, for the scenario's pages and extra ones
        for va, content in data.pages.items():
            pa = data.physical.get(va)
            if pa is None:
                raise ValueError(f"page {va:#x} has no physical address: it cannot be placed in a dump")
            self.pages[pa >> 12] = content
        self.tables: Dict[int, bytearray] = {}  # page-table frame -> its 512 entries
        self._next_table = TABLE_FIRST_PFN
        self.pml4 = self._new_table()  # the top-level table (PML4 on x64, level 0 on ARM64)
        self.noise: Optional[NoiseRegion] = None
        self.arm64 = data.arch == "arm64"
        if self.arm64:
            self.address_mask, self.table_flags = ARM64_ADDRESS_MASK, ARM64_TABLE_FLAGS
            self.self_map_index = ARM64_SELF_MAP_INDEX
        else:
            self.address_mask, self.table_flags = X64_ADDRESS_MASK, TABLE_FLAGS
            self.self_map_index = SELF_MAP_INDEX
        if data.pointer_size == 8:
            self.set_entry(self.pml4, self.self_map_index, (self.pml4 << 12) | self.table_flags)
            for va, pa in sorted(data.physical.items()):
                self.map(va, pa >> 12)
            if noise_pages:
                self.add_noise(noise_pages, seed)

    # ---- page tables ----------------------------------------------------------------------------

    def _new_table(self) -> int:
        while self._next_table in self.pages:
            self._next_table += 1
        pfn = self._next_table
        self._next_table += 1
        self.tables[pfn] = bytearray(PAGE_SIZE)
        return pfn

    def entry(self, table: int, index: int) -> int:
        return struct.unpack_from("<Q", self.tables[table], index * 8)[0]

    def set_entry(self, table: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self.tables[table], index * 8, value)

    def _is_table(self, entry: int) -> bool:
        if self.arm64:
            return entry & (ARM64_VALID | ARM64_TABLE_OR_PAGE) == ARM64_VALID | ARM64_TABLE_OR_PAGE
        return bool(entry & PTE_PRESENT) and not entry & PTE_LARGE_PAGE

    def table_frame(self, entry: int) -> int:
        """The frame an entry points to (the next table, or the page or block it maps)."""
        return (entry & self.address_mask) >> 12

    def _table_for(self, va: int, levels: int) -> int:
        """The table ``levels`` below the top-level table on the way to ``va``, created as needed."""
        table = self.pml4
        for shift in (39, 30, 21)[:levels]:
            index = (va >> shift) & 0x1FF
            entry = self.entry(table, index)
            if entry == 0:
                child = self._new_table()
                self.set_entry(table, index, (child << 12) | self.table_flags)
                entry = self.entry(table, index)
            if not self._is_table(entry):
                raise ValueError(f"{va:#x} is already inside a large page")
            table = self.table_frame(entry)
        return table

    def map(self, va: int, pfn: int) -> None:
        """Map the 4 KiB page at ``va`` to frame ``pfn``."""
        flags = ARM64_PAGE_FLAGS if self.arm64 else DATA_FLAGS
        self.set_entry(self._table_for(va, 3), (va >> 12) & 0x1FF, (pfn << 12) | flags)

    def map_transition(self, va: int, pfn: int) -> None:
        """An ARM64 level-3 entry in transition: ``va`` paged out, frame ``pfn`` still holding its page."""
        if not self.arm64:
            raise ValueError("transition entries are written for ARM64 only")
        self.set_entry(self._table_for(va, 3), (va >> 12) & 0x1FF, (pfn << 12) | ARM64_TRANSITION)

    def map_large(self, va: int, first_pfn: int, size: int) -> None:
        """Map a 2 MiB (PDE, level-2 block) or 1 GiB (PDPTE, level-1 block) page at ``va`` to the frames
        from ``first_pfn``."""
        levels, shift = {2 << 20: (2, 21), 1 << 30: (1, 30)}[size]
        if va % size or (first_pfn << 12) % size:
            raise ValueError("a large page must be aligned to its size, virtually and physically")
        flags = ARM64_BLOCK_FLAGS if self.arm64 else DATA_FLAGS | PTE_LARGE_PAGE
        self.set_entry(self._table_for(va, levels), (va >> shift) & 0x1FF, (first_pfn << 12) | flags)

    def add_noise(self, pages: int, seed: int) -> None:
        """Append ``pages`` (rounded up to 2 MiB) of noise frames above everything else, mapped with 2 MiB pages."""
        pages = -(-pages // 512) * 512
        first = -(-(self.highest_pfn() + 1) // 512) * 512
        self.noise = NoiseRegion(first, pages, seed)
        for index in range(pages // 512):
            self.map_large(NOISE_VA + index * (2 << 20), first + index * 512, 2 << 20)

    # ---- the machine ----------------------------------------------------------------------------

    def highest_pfn(self) -> int:
        candidates = [max(self.pages, default=0), max(self.tables, default=0), self.data.max_pfn or 0]
        if self.noise is not None:
            candidates.append(self.noise.first_pfn + self.noise.pages - 1)
        return max(candidates)

    def machine_runs(self) -> List[Tuple[int, int]]:
        """The PhysicalMemoryBlock: a PC's low 640 KiB, then everything from 1 MiB to the last frame."""
        return [(1, 0x9F), (0x100, self.highest_pfn() - 0x100 + 1)]

    def present_runs(self) -> List[Tuple[int, int]]:
        """(first frame, count) of the frames that hold something, in frame order."""
        frames = sorted(set(self.pages) | set(self.tables))
        runs: List[Tuple[int, int]] = []
        for frame in frames:
            if runs and runs[-1][0] + runs[-1][1] == frame:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((frame, 1))
        if self.noise is not None:
            runs.append((self.noise.first_pfn, self.noise.pages))
            runs.sort()
        return runs

    def frames(self, first: int, count: int, placed: Sequence[int]) -> bytes:
        """The contents of ``count`` consecutive frames; ``placed`` is the sorted list of placed frames."""
        out = bytearray(count * PAGE_SIZE)
        noise = self.noise
        if noise is not None:
            lo, hi = max(first, noise.first_pfn), min(first + count, noise.first_pfn + noise.pages)
            if lo < hi:
                out[(lo - first) * PAGE_SIZE:(hi - first) * PAGE_SIZE] = noise.content(lo, hi - lo)
        for index in range(bisect.bisect_left(placed, first), bisect.bisect_left(placed, first + count)):
            frame = placed[index]
            content = self.tables[frame] if frame in self.tables else self.pages[frame]
            out[(frame - first) * PAGE_SIZE:(frame - first + 1) * PAGE_SIZE] = content
        return bytes(out)

    # ---- writing --------------------------------------------------------------------------------

    def write(self, path: str, dump_type: int = DUMP_BITMAP, complete: bool = False) -> None:
        """Write the machine as a crash dump of ``dump_type`` (streamed, chunk by chunk).

        Full (1) and complete (0xA) dumps store every frame of the machine; a bitmap dump does too when
        ``complete`` (an 'FDMP' complete memory dump), else only the frames that hold something
        (an 'SDMP' kernel memory dump), as kernel memory dumps (8, 9) do.
        """
        if self.data.pointer_size == 4:
            if dump_type != DUMP_FULL:
                raise ValueError("32-bit dumps are written as full dumps only")
            self._write32(path)
            return
        layout = MEMORY_LAYOUTS[dump_type]
        machine = self.machine_runs()
        complete = complete or dump_type in (DUMP_FULL, DUMP_COMPLETE)
        stored = machine if complete else self.present_runs()
        header = self._header64(dump_type, machine)
        with open(path, "wb") as handle:
            handle.write(header)
            if layout == "bitmap":
                first_page = self._write_bitmap_header(handle, stored, complete)
            elif layout == "ranges":
                first_page = self._write_range_header(handle, dump_type, stored)
            else:
                first_page = HEADER64_SIZE
            handle.seek(first_page)
            self._write_frames(handle, stored)
            end = handle.tell()
            handle.truncate(end)
            handle.seek(H64_REQUIRED_DUMP_SPACE)
            handle.write(struct.pack("<Q", end))

    def _write_frames(self, handle: BinaryIO, runs: Sequence[Tuple[int, int]]) -> None:
        placed = sorted(set(self.pages) | set(self.tables))
        noise = self.noise
        for first, count in runs:
            for start in range(first, first + count, CHUNK_PAGES):
                size = min(CHUNK_PAGES, first + count - start)
                chunk_offset = handle.tell()
                if noise is not None and start < noise.first_pfn + noise.pages and start + size > noise.first_pfn:
                    handle.write(self.frames(start, size, placed))
                    continue
                # Only placed frames are written: the zero frames between them stay holes of a sparse file.
                for index in range(bisect.bisect_left(placed, start), bisect.bisect_left(placed, start + size)):
                    frame = placed[index]
                    handle.seek(chunk_offset + (frame - start) * PAGE_SIZE)
                    handle.write(self.tables[frame] if frame in self.tables else self.pages[frame])
                handle.seek(chunk_offset + size * PAGE_SIZE)

    def _header64(self, dump_type: int, machine: Sequence[Tuple[int, int]]) -> bytearray:
        data = self.data
        header = bytearray(SIGNATURE * (HEADER64_SIZE // 4))  # Windows fills unused header space with "PAGE"
        header[4:8] = VALID_DUMP64
        struct.pack_into("<I", header, H64_MAJOR_VERSION, 0xF)  # a free (retail) build
        struct.pack_into("<I", header, H64_MINOR_VERSION, data.build or 0)
        struct.pack_into("<Q", header, H64_DIRECTORY_TABLE_BASE, self.pml4 << 12)
        struct.pack_into("<Q", header, H64_PFN_DATABASE, 0)  # no PFN database is synthesized
        struct.pack_into("<Q", header, H64_PS_LOADED_MODULE_LIST, data.symbols.get("nt!PsLoadedModuleList", 0))
        struct.pack_into("<Q", header, H64_PS_ACTIVE_PROCESS_HEAD, data.symbols.get("nt!PsActiveProcessHead", 0))
        struct.pack_into("<I", header, H64_MACHINE_IMAGE_TYPE, MACHINE_ARM64 if self.arm64 else MACHINE_X64)
        struct.pack_into("<I", header, H64_NUMBER_PROCESSORS, self.processors)
        struct.pack_into("<Q", header, H64_BUGCHECK_CODE, data.bugcheck.code)  # the code and its padding
        struct.pack_into("<4Q", header, H64_BUGCHECK_PARAMETERS, *data.bugcheck.parameters)
        struct.pack_into("<Q", header, H64_KD_DEBUGGER_DATA_BLOCK, 0)  # no KDDEBUGGER_DATA64 is synthesized
        self._physical_memory_block(header, H64_PHYSICAL_MEMORY_BLOCK, machine, 8)
        if self.arm64:
            self._arm64_context(header)
        else:
            self._context(header)
        struct.pack_into("<I", header, H64_DUMP_TYPE, dump_type)
        struct.pack_into("<Q", header, H64_SYSTEM_TIME, SYSTEM_TIME)
        header[H64_COMMENT:H64_COMMENT + 128] = b"leakhunt synthesized dump".ljust(128, b"\0")
        return header

    @staticmethod
    def _physical_memory_block(header: bytearray, offset: int, runs: Sequence[Tuple[int, int]], width: int) -> None:
        word = "<Q" if width == 8 else "<I"
        struct.pack_into("<I", header, offset, len(runs))
        if width == 8:
            struct.pack_into("<I", header, offset + 4, 0)
        struct.pack_into(word, header, offset + (8 if width == 8 else 4), sum(count for _, count in runs))
        for index, (base, count) in enumerate(runs):
            struct.pack_into("<2Q" if width == 8 else "<2I", header, offset + RUNS_OFFSET[width] + index * 2 * width,
                             base, count)

    def _context(self, header: bytearray) -> None:
        """The x64 CONTEXT of kernel_context(): its integer registers and eflags, in kernel mode."""
        base = H64_CONTEXT_RECORD
        header[base:base + 0x4D0] = bytes(0x4D0)
        registers = kernel_context(self.data)
        for offset, fmt, value in ((CONTEXT_FLAGS, "<I", CONTEXT_AMD64_FULL), (CONTEXT_MXCSR, "<I", MXCSR_DEFAULT),
                                   (CONTEXT_EFLAGS, "<I", registers["efl"]), (CONTEXT_FLTSAVE_MXCSR, "<I", MXCSR_DEFAULT)):
            struct.pack_into(fmt, header, base + offset, value)
        for name, offset in CONTEXT_INTEGER.items():
            struct.pack_into("<Q", header, base + offset, registers[name])
        # SegCs, SegDs, SegEs, SegFs, SegGs, SegSs of kernel mode.
        struct.pack_into("<6H", header, base + CONTEXT_SEGMENTS, 0x10, 0x2B, 0x2B, 0x53, 0x2B, 0x18)

    def _arm64_context(self, header: bytearray) -> None:
        """The ARM64 CONTEXT of kernel_context(), at EL1."""
        base = H64_CONTEXT_RECORD
        header[base:base + ARM64_CONTEXT_SIZE] = bytes(ARM64_CONTEXT_SIZE)
        registers = kernel_context(self.data)
        values = [(ARM64_CONTEXT_FLAGS, "<I", ARM64_CONTEXT_FULL), (ARM64_CONTEXT_CPSR, "<I", ARM64_CPSR_EL1H),
                  (ARM64_CONTEXT_SP, "<Q", registers["sp"]), (ARM64_CONTEXT_FP, "<Q", registers["fp"]),
                  (ARM64_CONTEXT_PC, "<Q", registers["pc"]), (ARM64_CONTEXT_LR, "<Q", registers["lr"])]
        values += [(ARM64_CONTEXT_X0 + 8 * index, "<Q", registers[f"x{index}"]) for index in range(29)]
        for offset, fmt, value in values:
            struct.pack_into(fmt, header, base + offset, value)

    def _write_bitmap_header(self, handle: BinaryIO, runs: Sequence[Tuple[int, int]], complete: bool) -> int:
        bits = -(-(self.highest_pfn() + 1) // 8) * 8
        bitmap = np.zeros(bits, dtype=np.uint8)
        for first, count in runs:
            bitmap[first:first + count] = 1
        packed = np.packbits(bitmap, bitorder="little").tobytes()
        first_page = -(-(HEADER64_SIZE + BMP_BITMAP + len(packed)) // PAGE_SIZE) * PAGE_SIZE
        sub = bytearray(BMP_BITMAP)
        sub[0:4] = BMP_FULL_SIGNATURE if complete else BMP_SUMMARY_SIGNATURE
        sub[4:8] = BMP_VALID_DUMP
        struct.pack_into("<3Q", sub, BMP_FIRST_PAGE, first_page, sum(count for _, count in runs), bits)
        handle.write(bytes(sub) + packed)
        return first_page

    def _write_range_header(self, handle: BinaryIO, dump_type: int, runs: Sequence[Tuple[int, int]]) -> int:
        # (PFN, count) pairs from 0x2030, a zero pair after them, padded so that the pages start on a page.
        table_end = HEADER64_SIZE + RDMP_RANGES + 16 * (len(runs) + 1)
        first_page = -(-table_end // PAGE_SIZE) * PAGE_SIZE
        metadata_size = first_page - HEADER64_SIZE - RDMP_HEADER_SIZE
        sub = bytearray(first_page - HEADER64_SIZE)
        struct.pack_into("<I", sub, 0, RDMP_MARKER)
        sub[4:8] = RDMP_SIGNATURE
        sub[8:12] = RDMP_VALID_DUMP
        struct.pack_into("<Q", sub, RDMP_METADATA_SIZE, metadata_size)
        struct.pack_into("<Q", sub, RDMP_FIRST_PAGE_OFFSET, first_page)
        if dump_type == DUMP_COMPLETE:
            struct.pack_into("<I", sub, RDMP_HEADER_SIZE, len(runs))  # NumberOfRanges
            struct.pack_into("<Q", sub, RDMP_TOTAL_NUMBER_OF_PAGES, sum(count for _, count in runs))
        for index, (first, count) in enumerate(runs):
            struct.pack_into("<2Q", sub, RDMP_RANGES + 16 * index, first, count)
        handle.write(bytes(sub))
        return first_page

    def _write32(self, path: str) -> None:
        data = self.data
        runs = [(1, 0x9F), (0x100, self.highest_pfn() - 0x100 + 1)]
        header = bytearray(SIGNATURE * (HEADER32_SIZE // 4))
        header[4:8] = VALID_DUMP32
        struct.pack_into("<I", header, H32_MAJOR_VERSION, 0xF)
        struct.pack_into("<I", header, H32_MINOR_VERSION, data.build or 0)
        struct.pack_into("<I", header, H32_DIRECTORY_TABLE_BASE, 0)  # no x86 page tables are synthesized
        struct.pack_into("<I", header, H32_PS_LOADED_MODULE_LIST, data.symbols.get("nt!PsLoadedModuleList", 0))
        struct.pack_into("<I", header, H32_MACHINE_IMAGE_TYPE, MACHINE_X86)
        struct.pack_into("<I", header, H32_NUMBER_PROCESSORS, self.processors)
        struct.pack_into("<I", header, H32_BUGCHECK_CODE, data.bugcheck.code)
        struct.pack_into("<4I", header, H32_BUGCHECK_PARAMETERS, *data.bugcheck.parameters)
        self._physical_memory_block(header, H32_PHYSICAL_MEMORY_BLOCK, runs, 4)
        struct.pack_into("<I", header, H32_DUMP_TYPE, DUMP_FULL)
        with open(path, "wb") as handle:
            handle.write(header)
            self._write_frames(handle, runs)
            handle.truncate(handle.tell())


def write_dump(data: SnapshotData, path: str, dump_type: int = DUMP_BITMAP, noise_pages: int = 0,
               seed: int = 1) -> DumpImage:
    """Write ``data`` (a complete snapshot with physical addresses) as a crash dump file at ``path``."""
    image = DumpImage(data, noise_pages=noise_pages, seed=seed)
    image.write(path, dump_type)
    return image


# ---- small memory dumps (DumpType 4) ------------------------------------------------------------

# Where a small dump's synthesized kernel stack lies (no scenario page is there), by pointer size.
SMALL_DUMP_STACK_VA = 0xFFFFF60000010000
SMALL_DUMP_STACK_VA32 = 0x9F010000
SMALL_DUMP_PRCB_SIZE = 0x100  # the part of the KPRCB copy a reader uses (CurrentThread at +8)
MM_STORAGE = struct.pack("<2I", 1, 0x50) + bytes(0x48)  # DUMP_MM_STORAGE64: Version 1, Size 0x50


def _scenario_bytes(data: SnapshotData, address: int, size: int) -> bytearray:
    """``size`` bytes of the scenario's memory at ``address`` (pages it lacks read as zeros)."""
    out = bytearray()
    position = address
    while position < address + size:
        page = position & ~(PAGE_SIZE - 1)
        take = min(address + size, page + PAGE_SIZE) - position
        content = data.pages.get(page, bytes(PAGE_SIZE))
        out += content[position - page:position - page + take]
        position += take
    return out


def _object_copy(data: SnapshotData, address: int, size: int) -> bytes:
    """A thread or process copy as Windows writes it: the object, whose empty DISPATCHER_HEADER.WaitListHead
    points at itself (the scenario builders leave that list zero)."""
    from pykd_ext.targets.smalldump import WAIT_LIST_HEAD

    copy = _scenario_bytes(data, address, size)
    word = "Q" if data.pointer_size == 8 else "I"
    struct.pack_into(f"<2{word}", copy, WAIT_LIST_HEAD, address + WAIT_LIST_HEAD, address + WAIT_LIST_HEAD)
    return bytes(copy)


def add_crashing_thread(data: SnapshotData, process: int, start: int, thread_id: int = 0x1F4) -> int:
    """Put an ETHREAD of ``process`` on fresh pages of the scenario's memory, for a small dump whose scenario
    has no decodable thread; returns its address. x64: the build 19045 layout (started at ``start``, with
    its ids); x86, which has no built-in thread layout: the process pointer where the scene builders put
    KTHREAD.Process."""
    from pykd_ext.layouts import builtin_layout

    address = max(data.pages) + 0x10000
    content = bytearray(2 * PAGE_SIZE)
    content[0] = 6  # DISPATCHER_HEADER.Type: ThreadObject
    if data.pointer_size == 4:
        struct.pack_into("<I", content, 0x150, process)
    else:
        kthread, ethread = builtin_layout("_KTHREAD", 8, 19045), builtin_layout("_ETHREAD", 8, 19045)
        for layout, field, value in ((kthread, "ApcState.Process", process), (kthread, "Process", process),
                                     (ethread, "StartAddress", start), (ethread, "Cid.UniqueProcess", 0x9A0),
                                     (ethread, "Cid.UniqueThread", thread_id)):
            struct.pack_into("<Q", content, layout.offset(field), value)
    data.pages[address], data.pages[address + PAGE_SIZE] = bytes(content[:PAGE_SIZE]), bytes(content[PAGE_SIZE:])
    return address


def write_small_dump(data: SnapshotData, path: str, thread: int, process: int, thread_size: int = 0x900,
                     process_size: int = 0xA40, blocks: Sequence[Tuple[int, int]] = (),
                     stack_values: Sequence[int] = (), broken_driver: str = "",
                     unloaded: Sequence[Tuple[str, int, int]] = (), processors: int = 4) -> None:
    """Write the crash of a scenario as a small memory dump (DumpType 4) with a triage section: a
    ``DUMP_HEADER64`` and the section at 0x2000 for x64, a ``DUMP_HEADER32`` and the section at 0x1000
    for x86.

    The dump holds what Windows keeps: the loaded-driver list (``data.modules``, the kernel first), the
    ``unloaded`` drivers (name, start, end), a KPRCB copy whose CurrentThread is ``thread``, copies of
    ``thread`` and ``process`` (with a pointer-sized data block at the thread, as Windows writes), a
    kernel stack of ``stack_values`` at SMALL_DUMP_STACK_VA (SMALL_DUMP_STACK_VA32), the ``broken_driver``
    name (KiBugCheckDriver) and the scenario memory of each (address, size) in ``blocks``. On x64 the
    context record's rip is the first stack value and its rsp the stack.
    """
    from pykd_ext.targets.dumpheader import DUMP_TRIAGE
    from pykd_ext.targets.triage import (ENTRY_LAYOUTS, TRIAGE32_SIZE, TRIAGE32_TAIL, TRIAGE32_TOP_OF_STACK,
                                         TRIAGE64_DATA_PAGE, TRIAGE64_SIZE, TRIAGE64_TAIL, TRIAGE64_TOP_OF_STACK,
                                         TRIAGE_FIELDS, TRIAGE_TAIL_FIELDS, TRIAGE_VALID, UNLOADED_COUNT_SIZE,
                                         UNLOADED_NAME_CHARACTERS)

    width = data.pointer_size
    word = "Q" if width == 8 else "I"
    layout = ENTRY_LAYOUTS[width]
    header_size, section_size = (HEADER64_SIZE, TRIAGE64_SIZE) if width == 8 else (HEADER32_SIZE, TRIAGE32_SIZE)
    stack_va = SMALL_DUMP_STACK_VA if width == 8 else SMALL_DUMP_STACK_VA32
    body = bytearray()  # everything after the triage section
    start = header_size + section_size

    def place(content: bytes) -> int:
        offset = start + len(body)
        body.extend(content)
        body.extend(bytes(-len(body) % 8))
        return offset

    fields: Dict[str, int] = {}
    fields["MmOffset"] = place(MM_STORAGE)
    table = bytearray(UNLOADED_COUNT_SIZE + len(unloaded) * layout.unloaded_entry)
    struct.pack_into("<I", table, 0, len(unloaded))
    for index, (name, low, high) in enumerate(unloaded):
        entry = UNLOADED_COUNT_SIZE + index * layout.unloaded_entry
        kept = name[:UNLOADED_NAME_CHARACTERS].encode("utf-16-le")
        struct.pack_into("<2H", table, entry, len(kept), len(kept))
        table[entry + layout.unloaded_name:entry + layout.unloaded_name + len(kept)] = kept
        struct.pack_into(f"<2{word}", table, entry + layout.unloaded_start, low, high)
    fields["UnloadedDriversOffset"] = place(bytes(table))
    prcb = bytearray(SMALL_DUMP_PRCB_SIZE)
    struct.pack_into(f"<{word}", prcb, width, thread)  # KPRCB.CurrentThread
    fields["PrcbOffset"] = place(bytes(prcb))
    fields["ProcessOffset"] = place(_object_copy(data, process, process_size))
    fields["ThreadOffset"] = place(_object_copy(data, thread, thread_size))
    stack = struct.pack(f"<{len(stack_values)}{word}", *stack_values)
    fields["CallStackOffset"] = place(stack)
    fields["SizeOfCallStack"] = len(stack)
    # The driver list, then the string pool its names point into.
    pool_start = start + len(body) + len(data.modules) * layout.driver_entry
    pool = bytearray()

    def pooled(text: str) -> int:
        offset = pool_start + len(pool)
        pool.extend(struct.pack("<I", len(text) + 1) + (text + "\0").encode("utf-16-le"))
        pool.extend(bytes(-len(pool) % 8))
        return offset

    drivers = bytearray(len(data.modules) * layout.driver_entry)
    for index, module in enumerate(data.modules):
        entry = index * layout.driver_entry
        folder = "\\SystemRoot\\system32\\" if module.name in ("nt", "hal") else "\\SystemRoot\\System32\\drivers\\"
        struct.pack_into("<I", drivers, entry, pooled(folder + module.image))
        ldr = entry + layout.ldr_entry
        struct.pack_into(f"<{word}", drivers, ldr + layout.dll_base, module.base)
        struct.pack_into("<I", drivers, ldr + layout.size_of_image, module.size)
        struct.pack_into("<I", drivers, ldr + layout.time_date_stamp, module.timestamp or 0x5F000000 + index)
    broken = pooled(broken_driver) if broken_driver else 0
    fields["DriverListOffset"] = place(bytes(drivers))
    fields["DriverCount"] = len(data.modules)
    fields["StringPoolOffset"] = place(bytes(pool))
    fields["StringPoolSize"] = len(pool)
    fields["BrokenDriverOffset"] = broken
    kept = [(thread, width)] + list(blocks)
    contents = [bytes(_scenario_bytes(data, thread, width))] + [bytes(_scenario_bytes(data, va, size)) for va, size in blocks]
    block_table_offset = start + len(body)
    first_content = block_table_offset + len(kept) * layout.data_block
    block_table = bytearray()
    position = first_content
    for (va, size), content in zip(kept, contents):
        block_table += struct.pack(f"<{word}II", va, position, size)
        position += len(content)
    fields["DataBlocksOffset"] = place(bytes(block_table))
    fields["DataBlocksCount"] = len(kept)
    for content in contents:
        body.extend(content)
    fields["ValidOffset"] = place(TRIAGE_VALID)
    fields["SizeOfDump"] = start + len(body)
    section = bytearray(section_size)
    for index, name in enumerate(TRIAGE_FIELDS):
        struct.pack_into("<I", section, 4 * index, fields.get(name, 0xFFFFFFFF if name == "TriageOptions" else 0))
    if width == 8:
        struct.pack_into("<Q", section, TRIAGE64_TOP_OF_STACK, stack_va)
        struct.pack_into("<QII", section, TRIAGE64_DATA_PAGE, 0, 0, 0)
    else:
        struct.pack_into("<I", section, TRIAGE32_TOP_OF_STACK, stack_va)
    struct.pack_into("<4I", section, TRIAGE64_TAIL if width == 8 else TRIAGE32_TAIL,
                     *(fields.get(name, 0) for name in TRIAGE_TAIL_FIELDS))
    header = bytearray(SIGNATURE * (header_size // 4))
    if width == 8:
        _small_dump_header64(header, data, processors, stack_values, stack_va, start + len(body), DUMP_TRIAGE)
        struct.pack_into("<2I", section, 4 * TRIAGE_FIELDS.index("ContextOffset"), H64_CONTEXT_RECORD, 0xF00)
    else:
        header[4:8] = VALID_DUMP32
        for offset, value in ((H32_MAJOR_VERSION, 0xF), (H32_MINOR_VERSION, data.build or 0),
                              (H32_PS_LOADED_MODULE_LIST, data.symbols.get("nt!PsLoadedModuleList", 0)),
                              (H32_MACHINE_IMAGE_TYPE, MACHINE_X86), (H32_NUMBER_PROCESSORS, processors),
                              (H32_BUGCHECK_CODE, data.bugcheck.code), (H32_DUMP_TYPE, DUMP_TRIAGE)):
            struct.pack_into("<I", header, offset, value)
        struct.pack_into("<4I", header, H32_BUGCHECK_PARAMETERS, *data.bugcheck.parameters)
    with open(path, "wb") as handle:
        handle.write(bytes(header) + bytes(section) + bytes(body))


def _small_dump_header64(header: bytearray, data: SnapshotData, processors: int, stack_values: Sequence[int],
                         stack_va: int, size: int, dump_type: int) -> None:
    """The DUMP_HEADER64 of a small dump: the bug check, PsLoadedModuleList and a context record whose rip
    is the first stack value and rsp the stack."""
    header[4:8] = VALID_DUMP64
    struct.pack_into("<I", header, H64_MAJOR_VERSION, 0xF)
    struct.pack_into("<I", header, H64_MINOR_VERSION, data.build or 0)
    for offset in (H64_DIRECTORY_TABLE_BASE, H64_PFN_DATABASE, H64_PS_ACTIVE_PROCESS_HEAD, H64_KD_DEBUGGER_DATA_BLOCK):
        struct.pack_into("<Q", header, offset, 0)
    struct.pack_into("<Q", header, H64_PS_LOADED_MODULE_LIST, data.symbols.get("nt!PsLoadedModuleList", 0))
    struct.pack_into("<I", header, H64_MACHINE_IMAGE_TYPE, MACHINE_X64)
    struct.pack_into("<I", header, H64_NUMBER_PROCESSORS, processors)
    struct.pack_into("<I", header, H64_BUGCHECK_CODE, data.bugcheck.code)
    struct.pack_into("<4Q", header, H64_BUGCHECK_PARAMETERS, *data.bugcheck.parameters)
    header[H64_CONTEXT_RECORD:H64_CONTEXT_RECORD + 0x4D0] = bytes(0x4D0)
    struct.pack_into("<I", header, H64_CONTEXT_RECORD + CONTEXT_FLAGS, CONTEXT_AMD64_FULL)
    struct.pack_into("<Q", header, H64_CONTEXT_RECORD + CONTEXT_INTEGER["rip"], stack_values[0] if stack_values else 0)
    struct.pack_into("<Q", header, H64_CONTEXT_RECORD + CONTEXT_INTEGER["rsp"], stack_va)
    header[0xF00:0xF98] = bytes(0x98)  # the EXCEPTION_RECORD64
    struct.pack_into("<I", header, H64_DUMP_TYPE, dump_type)
    struct.pack_into("<Q", header, H64_REQUIRED_DUMP_SPACE, size)
    struct.pack_into("<Q", header, H64_SYSTEM_TIME, SYSTEM_TIME)
